#include "dist/world.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "dist/mpi_handles.h"

namespace deepmoe::dist {

namespace {

// Initializes MPI; `started` says whether MPI_Finalize is owed (also when a later check throws).
void start_mpi(bool& started) {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (initialized) fail("MPI is already initialized in this process: make one dist::World per process");
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  started = true;
  if (provided < MPI_THREAD_FUNNELED)
    fail("MPI_Init_thread: this MPI offers thread level {}, training needs MPI_THREAD_FUNNELED", provided);
  // Errors come back to us as codes (then Errors with context) instead of aborting the job.
  check_mpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
}

// When one rank dies (kill -9, the OOM killer), mpirun ends the others with SIGTERM. Rank 0 then
// says so in one line, ready-made because a signal handler may only write(2) and _exit(2). The
// handler can reach nothing but static storage: this buffer is the one piece of global state.
char stop_line[256] = {};
size_t stop_line_length = 0;

void on_stop_signal(int signal) {
  if (stop_line_length > 0) {
    const ssize_t written = ::write(STDERR_FILENO, stop_line, stop_line_length);
    (void)written;  // nothing left to do about a failed write
  }
  ::_exit(128 + signal);
}

void install_stop_line(int rank, int size) {
  if (rank == 0) {
    const int length = std::snprintf(
        stop_line, sizeof stop_line,
        "deepmoe: error: rank 0 of %d: mpirun ended the job because another rank died or failed (or mpirun was "
        "interrupted); train --resume continues from the newest checkpoint\n",
        size);
    stop_line_length = length > 0 ? std::min(size_t(length), sizeof stop_line - 1) : 0;
  }
  std::signal(SIGTERM, on_stop_signal);
}

}  // namespace

bool World::launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

World::World() : world_(Communicator::solo()) {
  if (!launched_by_mpirun()) return;
  try {
    start_mpi(mpi_);
    int rank = 0, size = 0;
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
    auto impl = std::make_unique<Communicator::Impl>();
    impl->comm = MPI_COMM_WORLD;
    world_ = Communicator(std::move(impl), rank, size);
    if (size > 1) install_stop_line(rank, size);
  } catch (...) {
    if (mpi_) MPI_Finalize();
    throw;
  }
}

World::~World() {
  if (!mpi_) return;
  world_ = Communicator::solo();  // sub-communicators belong to their owners, gone by now
  std::signal(SIGTERM, SIG_DFL);
  MPI_Finalize();
}

void World::abort_job(int exit_code) const {
  if (!mpi_ || world_.size() == 1) return;
  // This rank has said what went wrong: mpirun's SIGTERM must not add "another rank died" to it.
  std::signal(SIGTERM, SIG_DFL);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace deepmoe::dist
