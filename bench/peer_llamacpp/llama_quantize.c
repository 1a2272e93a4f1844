// llama.cpp's own quantizer on a GGUF file, through the libllama that node-llama-cpp ships
// prebuilt (no llama.cpp build needed). Lets us load files quantized by llama.cpp in deepmoe, and
// dequantize any file with ggml's own decoder (type f32) for an exact comparison.
//
//   llama_quantize IN.gguf OUT.gguf f32|q8_0|q4_0 [--mix] [--threads N] [--verbose]
//
// By default every 2-D/3-D weight gets the one requested type ("pure"), as deepmoe's writer does.
// --mix keeps llama.cpp's default mixture, which gives output.weight Q6_K for q4_0, a type deepmoe
// does not read yet. Norms, the router and 1-D tensors stay f32 either way (llama.cpp's rule).
//
// Built by build.sh. The declarations below are copied by hand from include/llama.h and
// ggml/include/ggml.h of the llama.cpp release node-llama-cpp 3.22.1 bundles
// (node_modules/node-llama-cpp/llama/gitRelease.bundle); main() checks the defaults libllama
// returns, so a layout that no longer matches stops with an error instead of quantizing wrongly.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GGML_TYPE_F32 = 0, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q8_0 = 8, GGML_TYPE_COUNT = 43 };
enum { LLAMA_FTYPE_ALL_F32 = 0, LLAMA_FTYPE_MOSTLY_Q4_0 = 2, LLAMA_FTYPE_MOSTLY_Q8_0 = 7 };
enum { GGML_LOG_LEVEL_WARN = 3 };

struct llama_model_quantize_params {
    int32_t nthread;
    int32_t ftype;                 // enum llama_ftype
    int32_t output_tensor_type;    // enum ggml_type
    int32_t token_embedding_type;  // enum ggml_type
    bool allow_requantize;
    bool quantize_output_tensor;
    bool only_copy;
    bool pure;
    bool keep_split;
    bool dry_run;
    const void *imatrix;
    const void *kv_overrides;
    const void *tt_overrides;
    const int32_t *prune_layers;
    size_t max_buf_size;
    // Slack: libllama writes the struct it knows through a hidden pointer, so a release that
    // appended fields must not write past our object.
    char reserved[256];
};

typedef void (*ggml_log_callback)(int level, const char *text, void *user_data);

void llama_backend_init(void);
void llama_log_set(ggml_log_callback callback, void *user_data);
struct llama_model_quantize_params llama_model_quantize_default_params(void);
uint32_t llama_model_quantize(const char *fname_inp, const char *fname_out,
                              const struct llama_model_quantize_params *params);

static int last_level = 0;

// Quantizing logs a line per tensor; keep only warnings and errors (and their continuations).
static void quiet_log(int level, const char *text, void *user_data) {
    (void)user_data;
    if (level != 5) last_level = level;  // 5 = GGML_LOG_LEVEL_CONT
    if (last_level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static void fail(const char *message, const char *detail) {
    fprintf(stderr, "llama_quantize: %s%s\n", message, detail ? detail : "");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 4) fail("usage: llama_quantize IN.gguf OUT.gguf f32|q8_0|q4_0 [--mix] [--threads N] [--verbose]", NULL);
    const char *in = argv[1], *out = argv[2], *type = argv[3];
    bool mix = false, verbose = false;
    int threads = 0;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--mix") == 0) mix = true;
        else if (strcmp(argv[i], "--verbose") == 0) verbose = true;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else fail("unknown argument ", argv[i]);
    }
    FILE *probe = fopen(in, "rb");
    if (!probe) fail("cannot open ", in);
    fclose(probe);

    struct llama_model_quantize_params params;
    memset(&params, 0, sizeof params);
    params = llama_model_quantize_default_params();
    // The defaults of this release: Q8_0, no type overrides, output quantized, not pure, 8 GiB.
    if (params.ftype != LLAMA_FTYPE_MOSTLY_Q8_0 || params.output_tensor_type != GGML_TYPE_COUNT ||
        params.token_embedding_type != GGML_TYPE_COUNT || !params.quantize_output_tensor || params.pure ||
        params.max_buf_size != 8ull << 30)
        fail("libllama's llama_model_quantize_params differ from the layout declared here (another llama.cpp release?)", NULL);

    if (strcmp(type, "q8_0") == 0) params.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    else if (strcmp(type, "q4_0") == 0) params.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
    else if (strcmp(type, "f32") == 0) params.ftype = LLAMA_FTYPE_ALL_F32;
    else fail("type must be f32, q8_0 or q4_0, not ", type);
    params.nthread = threads;
    params.pure = !mix;
    // Needed to read quantized inputs: f32 then means "dequantize with ggml's decoder".
    params.allow_requantize = true;

    if (!verbose) llama_log_set(quiet_log, NULL);
    llama_backend_init();
    if (llama_model_quantize(in, out, &params) != 0) fail("llama_model_quantize failed on ", in);
    printf("wrote %s (%s%s, by llama.cpp)\n", out, type, mix ? ", llama.cpp's mixture" : "");
    return 0;
}
