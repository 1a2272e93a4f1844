// What the HTTP layer adds around a response body: finding 18.3.2, an exception thrown while a
// streamed body is written reached std::terminate inside cpp-httplib.
#include "serve/http_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <stdexcept>
#include <string>

namespace deepmoe {
namespace {

TEST(HttpServer, AnExceptionInABodyProviderEndsTheBodyWithAnError) {
  std::string written;
  bool done = false, cleaned_up = false;
  httplib::DataSink sink;
  sink.write = [&](const char* data, size_t size) {
    written.append(data, size);
    return true;
  };
  sink.done = [&] { done = true; };
  const BodyProvider guarded = never_throwing(
      [](size_t, httplib::DataSink& s) -> bool {
        s.write("data: 1\n\n", 9);
        throw std::runtime_error("token id 128895 is not in the vocabulary");
      },
      [](const std::string& message) { return "data: {\"error\": \"" + message + "\"}\n\n"; },
      [&] { cleaned_up = true; });
  EXPECT_TRUE(guarded(0, sink));
  EXPECT_EQ(written, "data: 1\n\ndata: {\"error\": \"token id 128895 is not in the vocabulary\"}\n\n");
  EXPECT_TRUE(done);
  EXPECT_TRUE(cleaned_up);

  // Without an exception it is the provider itself.
  written.clear();
  done = cleaned_up = false;
  const BodyProvider plain = never_throwing(
      [](size_t, httplib::DataSink& s) {
        s.write("x", 1);
        return false;
      },
      [](const std::string&) { return std::string("unused"); }, [&] { cleaned_up = true; });
  EXPECT_FALSE(plain(0, sink));
  EXPECT_EQ(written, "x");
  EXPECT_FALSE(done || cleaned_up);
}

TEST(HttpServer, LoopbackHostsAreThisMachinesOnly) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1"})
    EXPECT_TRUE(is_loopback_host(host)) << host;
  for (const char* host : {"0.0.0.0", "::", "10.0.0.1", "example.com", "128.0.0.1", "localhost.example.com"})
    EXPECT_FALSE(is_loopback_host(host)) << host;
}

}  // namespace
}  // namespace deepmoe
