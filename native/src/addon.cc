// Entry point of the etd_transparent addon: one Init per Node environment (main thread or worker) registering every export.

#include <napi.h>

#include "addon.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  etd::RegisterTransparent(env, exports);
  etd::RegisterEngine(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(etd_transparent, Init)
