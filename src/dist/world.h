// The processes of this job. Started by Open MPI's mpirun (it sets OMPI_COMM_WORLD_SIZE), a World
// initializes MPI and finalizes it when destroyed; started alone, it is a solo world of one rank
// and never touches MPI, so the binary runs where no MPI runtime is set up. One World per process,
// owned by whoever runs the job (the CLI), and handed down by reference.
#pragma once
#include "dist/communicator.h"

namespace deepmoe::dist {

class World {
 public:
  // Initializes MPI (thread level funneled: only the calling thread talks to MPI; the thread
  // pool's workers never do) when under mpirun. Throws Error when MPI cannot start or is
  // already running in this process. With more than one rank it also handles SIGTERM, which
  // mpirun sends to every rank left when one dies: rank 0 writes one line saying so, and every
  // rank exits 128 + SIGTERM at once (the destructor restores the default).
  World();
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  // Whether this process was started by mpirun, read from the environment.
  static bool launched_by_mpirun();

  Communicator& communicator() { return world_; }
  const Communicator& communicator() const { return world_; }

  // Ends every rank of the job at once (MPI_Abort): for an error one rank met alone, which would
  // leave the others waiting in a collective forever. A solo world just returns.
  void abort_job(int exit_code) const;

 private:
  bool mpi_ = false;
  Communicator world_;
};

}  // namespace deepmoe::dist
