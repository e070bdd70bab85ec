# Build description of etd's one native addon (etd_transparent.node): transparent socket fds and the session engine.
{
  "targets": [
    {
      "target_name": "etd_transparent",
      "sources": [
        "src/addon.cc", "src/common.cc", "src/transparent.cc",
        "src/binding.cc", "src/hub.cc", "src/loop.cc", "src/listeners.cc", "src/session.cc", "src/relay.cc", "src/smtp_guard.cc", "src/inspect.cc", "src/faults.cc"
      ],
      # node-addon-api is header-only; resolve it the way Node would from this directory,
      # so the build works both in the repo and when etd is installed as a dependency.
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # Node-API 8 is in every Node >= 12.22 / 14.17 / 16; etd needs Node >= 20 anyway.
      # No C++ exceptions: every error is thrown into JS explicitly, next to the syscall that failed.
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
