// listeners[].freebind: a listener binds an address this host does not hold (IP_FREEBIND), as the
// standby of an HA pair does with the VIP; without it the bind fails with EADDRNOTAVAIL and a hint.
//
// 192.0.2.0/24 and 2001:db8::/32 are documentation prefixes no host here holds; nothing is sent.

import { expect, it } from 'vitest';
import { TransparentSyscallError, loadTransparent } from '../../src/native/transparent.js';

const sockets = loadTransparent();

it('binds a non-local IPv4 and IPv6 address only with freebind', () => {
  for (const [family, address] of [
    [4, '192.0.2.77'],
    [6, '2001:db8::77'],
  ] as const) {
    let thrown: unknown;
    try {
      sockets.closeFd(sockets.plainListener({ family, address, port: 0, backlog: 1, v6only: true }));
    } catch (e) {
      thrown = e;
    }
    expect(thrown, address).toBeInstanceOf(TransparentSyscallError);
    expect((thrown as TransparentSyscallError).message, address).toMatch(/EADDRNOTAVAIL/);

    const fd = sockets.plainListener({ family, address, port: 0, backlog: 1, v6only: true, freebind: true });
    try {
      const [bound, port] = sockets.sockName(fd);
      expect(bound).toBe(address);
      expect(port).toBeGreaterThan(0);
    } finally {
      sockets.closeFd(fd);
    }
  }
});

it('rejects a freebind that is not a boolean', () => {
  expect(() => sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 1, v6only: false, freebind: 'yes' as unknown as boolean })).toThrow(TypeError);
});
