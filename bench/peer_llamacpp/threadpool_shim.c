// LD_PRELOAD shim: gives every llama.cpp context in the process a persistent ggml thread pool, as
// llama-bench does, so that node-llama-cpp's llama.cpp is timed the way llama.cpp times itself.
//
// Without a pool, ggml's CPU backend (this pthread build, no OpenMP) creates and joins its worker
// threads inside every graph computation, i.e. once per decoded token. llama-bench instead makes
// one pool (ggml_threadpool_new) and attaches it (llama_attach_threadpool); node-llama-cpp has no
// option for it, so this shim does it on a context's first llama_decode and frees the pool after
// llama_free.
//
//   LD_PRELOAD=build/threadpool_shim.so node race.mjs ...
//   DEEPMOE_SHIM_THREADS=N   pool size (default: the context's own thread count)
//   DEEPMOE_SHIM_POLL=P      0..100, how long idle workers spin before sleeping (default 50, as
//                            llama-bench); spinning hurts badly when other processes share the cores
//   DEEPMOE_SHIM_VERBOSE=1   one stderr line per pool attached
//
// Only llama_decode and llama_free are intercepted. The functions are found at run time in the
// libraries node's addon loaded (privately, RTLD_LOCAL), so nothing is linked and the shim is
// inert in any other process. The declarations are from llama.h / ggml.h of the release that
// node-llama-cpp 3.22.1 bundles; llama_batch has had this layout since 2023.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct llama_batch {
    int32_t n_tokens;
    int32_t *token;
    float *embd;
    int32_t *pos;
    int32_t *n_seq_id;
    int32_t **seq_id;
    int8_t *logits;
};

#define GGML_MAX_N_THREADS 512
struct ggml_threadpool_params {
    bool cpumask[GGML_MAX_N_THREADS];
    int n_threads;
    int prio;       // enum ggml_sched_priority
    uint32_t poll;  // 0..100; ggml's default 50 is llama-bench's default too
    bool strict_cpu;
    bool paused;
};
enum { GGML_BACKEND_DEVICE_TYPE_CPU = 0 };

typedef int32_t (*decode_fn)(void *ctx, struct llama_batch batch);
typedef void (*free_fn)(void *ctx);
typedef int32_t (*n_threads_fn)(void *ctx);
typedef void (*attach_fn)(void *ctx, void *threadpool, void *threadpool_batch);
typedef struct ggml_threadpool_params (*params_default_fn)(int n_threads);
typedef void *(*dev_by_type_fn)(int type);
typedef void *(*dev_backend_reg_fn)(void *dev);
typedef void *(*reg_get_proc_address_fn)(void *reg, const char *name);
typedef void *(*threadpool_new_fn)(struct ggml_threadpool_params *params);
typedef void (*threadpool_free_fn)(void *threadpool);

static void die(const char *what) {
    fprintf(stderr, "threadpool_shim: %s\n", what);
    exit(1);
}

// Looks a symbol up in every loaded object but this one: the llama libraries are loaded
// RTLD_LOCAL by node, so neither RTLD_DEFAULT nor RTLD_NEXT reaches them.
struct lookup {
    const char *name;
    void *found;
};
static int lookup_in_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct lookup *l = data;
    if (!info->dlpi_name || !info->dlpi_name[0] || strstr(info->dlpi_name, "threadpool_shim")) return 0;
    void *handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) return 0;
    l->found = dlsym(handle, l->name);
    dlclose(handle);  // only drops the reference NOLOAD added
    return l->found != NULL;
}
static void *find(const char *name) {
    void *p = dlsym(RTLD_NEXT, name);
    if (p) return p;
    struct lookup l = {name, NULL};
    dl_iterate_phdr(lookup_in_object, &l);
    if (!l.found) {
        fprintf(stderr, "threadpool_shim: %s not found in any loaded library\n", name);
        exit(1);
    }
    return l.found;
}

// Contexts that have a pool: a handful per process at most.
#define MAX_CONTEXTS 64
static struct {
    void *ctx;
    void *pool;
} attached[MAX_CONTEXTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *new_pool(int n_threads) {
    void *cpu = ((dev_by_type_fn)find("ggml_backend_dev_by_type"))(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) die("no CPU backend device");
    void *reg = ((dev_backend_reg_fn)find("ggml_backend_dev_backend_reg"))(cpu);
    reg_get_proc_address_fn get = (reg_get_proc_address_fn)find("ggml_backend_reg_get_proc_address");
    // The CPU backend is a dynamically chosen variant (zen4, haswell, ...): ask its registry.
    threadpool_new_fn pool_new = (threadpool_new_fn)get(reg, "ggml_threadpool_new");
    if (!pool_new) die("the CPU backend has no ggml_threadpool_new");
    struct ggml_threadpool_params params = ((params_default_fn)find("ggml_threadpool_params_default"))(n_threads);
    const char *poll = getenv("DEEPMOE_SHIM_POLL");
    if (poll) params.poll = (uint32_t)atoi(poll);
    void *pool = pool_new(&params);
    if (!pool) die("ggml_threadpool_new failed");
    return pool;
}

int32_t llama_decode(void *ctx, struct llama_batch batch) {
    static decode_fn real_decode;
    if (!real_decode) real_decode = (decode_fn)find("llama_decode");
    pthread_mutex_lock(&lock);
    int free_slot = -1, known = 0;
    for (int i = 0; i < MAX_CONTEXTS; i++) {
        if (attached[i].ctx == ctx) known = 1;
        if (!attached[i].ctx && free_slot < 0) free_slot = i;
    }
    if (!known) {
        if (free_slot < 0) die("more than 64 live llama contexts");
        const char *env = getenv("DEEPMOE_SHIM_THREADS");
        int n_threads = env && atoi(env) > 0 ? atoi(env) : ((n_threads_fn)find("llama_n_threads"))(ctx);
        void *pool = new_pool(n_threads);
        ((attach_fn)find("llama_attach_threadpool"))(ctx, pool, NULL);  // NULL: the batch pool is the same
        attached[free_slot].ctx = ctx;
        attached[free_slot].pool = pool;
        if (getenv("DEEPMOE_SHIM_VERBOSE"))
            fprintf(stderr, "threadpool_shim: a pool of %d threads attached to context %p\n", n_threads, ctx);
    }
    pthread_mutex_unlock(&lock);
    return real_decode(ctx, batch);
}

void llama_free(void *ctx) {
    static free_fn real_free;
    if (!real_free) real_free = (free_fn)find("llama_free");
    real_free(ctx);  // the context first: it may still compute on its pool while tearing down
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CONTEXTS; i++) {
        if (attached[i].ctx == ctx) {
            void *cpu = ((dev_by_type_fn)find("ggml_backend_dev_by_type"))(GGML_BACKEND_DEVICE_TYPE_CPU);
            void *reg = ((dev_backend_reg_fn)find("ggml_backend_dev_backend_reg"))(cpu);
            threadpool_free_fn pool_free = (threadpool_free_fn)((reg_get_proc_address_fn)find(
                "ggml_backend_reg_get_proc_address"))(reg, "ggml_threadpool_free");
            if (pool_free) pool_free(attached[i].pool);
            attached[i].ctx = attached[i].pool = NULL;
        }
    }
    pthread_mutex_unlock(&lock);
}
