#include "dist/world.h"

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
  } catch (...) {
    if (mpi_) MPI_Finalize();
    throw;
  }
}

World::~World() {
  if (!mpi_) return;
  world_ = Communicator::solo();  // sub-communicators belong to their owners, gone by now
  MPI_Finalize();
}

void World::abort_job(int exit_code) const {
  if (mpi_ && world_.size() > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace deepmoe::dist
