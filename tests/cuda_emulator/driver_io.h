// The drivers' binary input and output: fixed-size values read from stdin and written to stdout.
#pragma once

#include <cstdint>
#include <cstdio>
#include <vector>

#include "fakecuda.h"

template <class T>
std::vector<T> read_values(int64_t count) {
  std::vector<T> values(static_cast<size_t>(count));
  if (std::fread(values.data(), sizeof(T), values.size(), stdin) != values.size())
    fakecuda::fail("short read from stdin");
  return values;
}

template <class T>
void write_values(const std::vector<T>& values) {
  std::fwrite(values.data(), sizeof(T), values.size(), stdout);
}
