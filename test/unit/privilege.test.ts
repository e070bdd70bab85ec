// The privilege-drop decision (src/privilege/plan.ts) and its helpers: who drops, to whom, with which setpriv options.

import { describe, expect, it } from 'vitest';
import { isEtdError } from '../../src/errors.js';
import { describeCaps, keptIn, parseCapMask } from '../../src/privilege/caps.js';
import { type Account, planPrivileges, setprivOptions, underSystemd } from '../../src/privilege/plan.js';
import { parsePasswdLine } from '../../src/privilege/user.js';

const ALL = 0x1ffffffffffn;
const ETD: Account = { name: 'etd', uid: 998, gid: 997 };
const root = (env: Record<string, string> = {}, ppid = 4242) => ({ uid: 0, ppid, env, permitted: ALL });
const users =
  (...accounts: Account[]) =>
  (name: string) =>
    accounts.find((a) => a.name === name);
const defaultUser = { user: 'etd', userExplicit: false };

describe('planPrivileges', () => {
  it('root outside systemd drops to the user with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE', () => {
    expect(planPrivileges(defaultUser, root(), users(ETD))).toEqual({
      action: 'drop',
      account: ETD,
      caps: ['net_admin', 'net_bind_service'],
    });
  });

  it('keeps only the capabilities the process holds (a container without CAP_NET_ADMIN)', () => {
    expect(planPrivileges(defaultUser, { ...root(), permitted: 1n << 10n }, users(ETD))).toMatchObject({ caps: ['net_bind_service'] });
  });

  it('a process that is not root stays as it is, silently', () => {
    expect(planPrivileges(defaultUser, { ...root(), uid: 998 }, users(ETD))).toEqual({ action: 'stay' });
  });

  it('the default user missing: stays root with a warning naming both fixes', () => {
    const plan = planPrivileges(defaultUser, root(), users());
    expect(plan.action).toBe('stay');
    expect(plan.action === 'stay' && plan.warning).toMatch(/user etd does not exist.*useradd .*etd.*user: root/);
  });

  it('an explicit user that does not exist is ETD_ERR_USER', () => {
    let err: unknown;
    try {
      planPrivileges({ user: 'mailproxy', userExplicit: true }, root(), users(ETD));
    } catch (e) {
      err = e;
    }
    expect(isEtdError(err, 'ETD_ERR_USER')).toBe(true);
    expect((err as Error).message).toMatch(/no user "mailproxy".*useradd/);
  });

  it('user: root, a uid-0 alias and ETD_DROP_PRIVILEGES=no keep root, each with a warning', () => {
    for (const [config, env, lookup] of [
      [{ user: 'root', userExplicit: true }, {}, users()],
      [{ user: 'toor', userExplicit: true }, {}, users({ name: 'toor', uid: 0, gid: 0 })],
      [defaultUser, { ETD_DROP_PRIVILEGES: 'no' }, users(ETD)],
    ] as const) {
      const plan = planPrivileges(config, root(env), lookup);
      expect(plan.action).toBe('stay');
      expect(plan.action === 'stay' && plan.warning).toMatch(/running as root/);
    }
  });

  it('under systemd (INVOCATION_ID and a child of PID 1) the unit decides; ETD_DROP_PRIVILEGES=yes drops anyway', () => {
    const env = { INVOCATION_ID: 'abc' };
    expect(planPrivileges(defaultUser, root(env, 1), users(ETD))).toMatchObject({
      action: 'stay',
      warning: expect.stringMatching(/under systemd/),
    });
    expect(planPrivileges(defaultUser, root({ ...env, ETD_DROP_PRIVILEGES: 'yes' }, 1), users(ETD))).toMatchObject({ action: 'drop' });
    // A shell started by a service inherits INVOCATION_ID, but etd is then not PID 1's child.
    expect(planPrivileges(defaultUser, root(env, 4242), users(ETD))).toMatchObject({ action: 'drop' });
    expect(underSystemd({ env: {}, ppid: 1 })).toBe(false);
  });

  it('a bad ETD_DROP_PRIVILEGES value is an error', () => {
    expect(() => planPrivileges(defaultUser, root({ ETD_DROP_PRIVILEGES: 'maybe' }), users(ETD))).toThrow(/ETD_DROP_PRIVILEGES.*auto/);
  });
});

describe('setprivOptions', () => {
  it('mirrors the unit: user and groups, the same inheritable, ambient and bounding sets, no new privileges', () => {
    expect(setprivOptions(ETD, ['net_admin', 'net_bind_service'])).toEqual([
      '--reuid=998',
      '--regid=997',
      '--init-groups',
      '--inh-caps=-all,+net_admin,+net_bind_service',
      '--ambient-caps=-all,+net_admin,+net_bind_service',
      '--bounding-set=-all,+net_admin,+net_bind_service',
      '--no-new-privs',
    ]);
  });
});

describe('capabilities and passwd lines', () => {
  it('parses and describes masks', () => {
    const status = 'Name:\tnode\nCapPrm:\t0000000000001400\nCapEff:\t000001ffffffffff\n';
    expect(parseCapMask(status, 'CapPrm')).toBe(0x1400n);
    expect(keptIn(0x1400n)).toEqual(['net_admin', 'net_bind_service']);
    expect(describeCaps(0x1400n)).toBe('CAP_NET_ADMIN CAP_NET_BIND_SERVICE');
    expect(describeCaps(0n)).toBe('none');
    expect(describeCaps(parseCapMask(status, 'CapEff')!)).toBe('CAP_NET_ADMIN CAP_NET_BIND_SERVICE and 39 more');
  });

  it('reads getent passwd lines', () => {
    expect(parsePasswdLine('etd:x:998:997:etd:/var/lib/etd:/usr/sbin/nologin\n')).toEqual(ETD);
    expect(parsePasswdLine('garbage')).toBeUndefined();
  });
});
