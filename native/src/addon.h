// The parts of the etd_transparent addon that addon.cc's Init registers: each source file adds its own exports.

#ifndef ETD_ADDON_H_
#define ETD_ADDON_H_

#include <napi.h>

namespace etd {

// transparentSocket, transparentListener, plainListener, sockName, closeFd (transparent.cc).
void RegisterTransparent(Napi::Env env, Napi::Object exports);

// engineStart ... engineCounts (binding.cc, docs/engine.md). Also sets the
// environment's instance data (the engine state of this main thread or worker).
void RegisterEngine(Napi::Env env, Napi::Object exports);

}  // namespace etd

#endif  // ETD_ADDON_H_
