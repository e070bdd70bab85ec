// `etd rules show|apply|remove`: print, install or remove etd's nft table and policy routing for a config.
//
// EtdErrors (ETD_ERR_NFT, ETD_ERR_ROUTING, ETD_ERR_NFT_LOAD) propagate to the CLI, which prints
// code, message and hint uniformly; the returned number is the exit code otherwise.

import type { Config } from '../config/schema.js';
import { describeError, isEtdError } from '../errors.js';
import { run } from '../native/nftables.js';
import { FAMILIES, formatStep, planApplyRouting, planRemoveRouting } from '../netfilter/routing.js';
import { rulesetBatch } from '../netfilter/ruleset.js';
import {
  applyNetfilter,
  type CheckItem,
  type NetfilterLog,
  type NetfilterState,
  netfilterRequired,
  removeNetfilter,
  verifyNetfilter,
} from '../netfilter/setup.js';

export type RulesSubcommand = 'show' | 'apply' | 'remove';

const MARK: Record<CheckItem['status'], string> = {
  ok: 'ok       ',
  missing: 'MISSING  ',
  duplicate: 'DUPLICATE',
  mismatch: 'MISMATCH ',
  unexpected: 'STALE    ',
  unsupported: 'n/a      ',
};

function printState(state: NetfilterState, out: (line: string) => void): void {
  for (const i of state.items) out(`  ${MARK[i.status]} ${i.what}${i.detail ? `  (${i.detail})` : ''}`);
}

/** A NetfilterLog that prints to `out`: "msg key=value ...". */
function lineLog(out: (line: string) => void): NetfilterLog {
  const fmt = (obj: object, msg: string) =>
    `${msg}${Object.entries(obj)
      .map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join('')}`;
  return { info: (obj, msg) => out(fmt(obj, msg)), warn: (obj, msg) => out(`warning: ${fmt(obj, msg)}`) };
}

function notes(config: Config, out: (line: string) => void): void {
  if (!netfilterRequired(config)) out('# note: every listener is mode: plain, which needs none of this; `etd run` will not install it');
  else if (!config.netfilter.manage)
    out('# note: netfilter.manage is false: `etd run` leaves these rules to you (e.g. `etd rules apply` in ExecStartPre)');
}

export async function rulesCommand(sub: RulesSubcommand, config: Config, out: (line: string) => void): Promise<number> {
  const nf = config.netfilter;
  switch (sub) {
    case 'show': {
      notes(config, out);
      out(`# nft batch (one atomic transaction; equivalent: nft -f FILE)`);
      for (const line of rulesetBatch(config).trimEnd().split('\n')) out(line);
      out('# policy routing (the deletes repeat until no copy is left)');
      for (const family of FAMILIES) for (const step of planApplyRouting(nf, family)) out(formatStep(step));
      out('# removal (etd rules remove, and on stop)');
      out(`nft delete table inet ${nf.tableName}`);
      for (const family of FAMILIES) for (const step of planRemoveRouting(nf, family)) out(formatStep(step));
      out('');
      out('# current state');
      let state: NetfilterState;
      try {
        state = await verifyNetfilter(config);
      } catch (e) {
        // Showing the plan is useful without privileges; the live state needs CAP_NET_ADMIN.
        if (!isEtdError(e)) throw e;
        out(`  unavailable: ${describeError(e)}`);
        return 0;
      }
      printState(state, out);
      out(
        state.ok
          ? '# all present'
          : state.clean
            ? '# nothing of etd is installed'
            : '# incomplete: `etd rules apply` installs the missing parts',
      );
      if (state.items.some((i) => i.id === 'nft.table' && i.present)) {
        out('');
        out(`# nft list table inet ${nf.tableName}`);
        for (const line of run(`list table inet ${nf.tableName}`).trimEnd().split('\n')) out(line);
      }
      return 0;
    }
    case 'apply': {
      notes(config, out);
      await applyNetfilter(config, lineLog(out));
      const state = await verifyNetfilter(config);
      printState(state, out);
      if (!state.ok) out('error: the rules were applied but the state read back is not complete (see above)');
      return state.ok ? 0 : 1;
    }
    case 'remove': {
      await removeNetfilter(config, lineLog(out));
      const state = await verifyNetfilter(config);
      const left = state.items.filter((i) => i.present);
      for (const i of left) out(`  still present: ${i.what}`);
      if (left.length) out('error: something of etd is still installed (see above)');
      return state.clean ? 0 : 1;
    }
  }
}
