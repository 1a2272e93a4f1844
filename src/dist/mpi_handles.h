// Inside dist/ only: what a Communicator and a Request hold when MPI runs, and the check that
// turns an MPI return code into an Error. Other layers never include MPI's headers.
#pragma once
#include <mpi.h>

#include <vector>

#include "dist/communicator.h"

namespace deepmoe::dist {

struct Communicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;  // made by split(): freed with the Communicator; MPI_COMM_WORLD is MPI's
  ~Impl();
};

struct Request::Impl {
  MPI_Request request = MPI_REQUEST_NULL;
  const char* call = "";
  // MPI reads them until the collective completes (recv_*: an all-to-all's receiving side).
  std::vector<int> counts, displacements, recv_counts, recv_displacements;
};

// Throws Error "<call>: <MPI's message>" unless code is MPI_SUCCESS.
void check_mpi(int code, const char* call);

}  // namespace deepmoe::dist
