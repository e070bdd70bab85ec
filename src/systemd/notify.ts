// sd_notify for Type=notify: tells systemd etd is ready (or stopping) through libsystemd via koffi.
//
// Only acts when systemd set NOTIFY_SOCKET. When libsystemd cannot be loaded the unit would
// time out waiting for READY=1, so the fallback is loud: a message on stderr naming the fix.

import koffi from 'koffi';

type SdNotify = (unsetEnvironment: number, state: string) => number;
let sdNotify: SdNotify | null | undefined;

function load(): SdNotify | null {
  if (sdNotify !== undefined) return sdNotify;
  try {
    const lib = koffi.load('libsystemd.so.0');
    sdNotify = lib.func('int sd_notify(int unset_environment, const char *state)') as SdNotify;
  } catch (e) {
    process.stderr.write(
      `etd: NOTIFY_SOCKET is set but libsystemd.so.0 cannot be loaded (${e instanceof Error ? e.message : String(e)}); ` +
        'systemd will not see READY=1 — install libsystemd0, or set Type=simple in the unit\n',
    );
    sdNotify = null;
  }
  return sdNotify;
}

/** Sends a state string ("READY=1", "STOPPING=1", "STATUS=…"); returns whether systemd got it. */
export function notify(state: string): boolean {
  if (!process.env.NOTIFY_SOCKET) return false;
  const fn = load();
  return fn ? fn(0, state) > 0 : false;
}

export function notifyReady(): boolean {
  return notify(`READY=1\nSTATUS=serving\nMAINPID=${process.pid}`);
}

export function notifyStopping(): boolean {
  return notify('STOPPING=1');
}
