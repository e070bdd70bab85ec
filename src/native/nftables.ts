// The koffi binding of libnftables: run an nft command batch atomically and return its output, or throw ETD_ERR_NFT.
//
// Design notes (measured on Debian 12, libnftables 1.0.6, kernel 6.x):
// - One context per call. Creating and freeing a context costs ~0.05 ms more than reusing one
//   (0.2 ms vs 0.15 ms per `list tables`), and etd runs a handful of batches per start/stop. In
//   exchange no state leaks between calls: output flags (JSON), dry-run mode and the ruleset cache
//   are per context, and a long-lived context would keep its netlink socket in whatever network
//   namespace it was created in.
// - Both output and error go to buffers (never to the process's stdout/stderr). libnftables still
//   writes "Operation not permitted (you must be root)" straight to stderr when run unprivileged.
// - libnftables 1.0.6 echoes the FIRST line of a buffer under every error, with the caret at the
//   column of the real offending line. So on a located error we find the real line ourselves with
//   dry runs of ever longer prefixes of the batch (binary search; dry runs never commit).
// - JSON input is only parsed when the JSON output flag is set; with the flag set, a plain-text
//   command still falls back to the text parser, which is what runJson relies on.
// - koffi and the library are loaded lazily, on the first call, so `etd` in plain mode (or an
//   unprivileged `etd check`) never needs either.

import { createRequire } from 'node:module';
import { EtdError } from '../errors.js';

type Koffi = typeof import('koffi');

/** An opaque `struct nft_ctx *` as koffi hands it back. */
type NftCtx = { readonly __brand: 'nft_ctx' };

interface LibNftables {
  nft_ctx_new(flags: number): NftCtx | null;
  nft_ctx_free(ctx: NftCtx): void;
  nft_ctx_output_set_flags(ctx: NftCtx, flags: number): void;
  nft_ctx_set_dry_run(ctx: NftCtx, dry: boolean): void;
  nft_ctx_buffer_output(ctx: NftCtx): number;
  nft_ctx_buffer_error(ctx: NftCtx): number;
  nft_run_cmd_from_buffer(ctx: NftCtx, buf: string): number;
  nft_ctx_get_output_buffer(ctx: NftCtx): string | null;
  nft_ctx_get_error_buffer(ctx: NftCtx): string | null;
}

// From <nftables/libnftables.h>; the ABI of libnftables.so.1 keeps these values.
const NFT_CTX_DEFAULT = 0;
const NFT_CTX_OUTPUT_JSON = 1 << 4;

const LIBRARY_NAMES = ['libnftables.so.1', 'libnftables.so'] as const;
const LOAD_HINT = 'install libnftables (Debian/Ubuntu: apt-get install libnftables1)';
const EPERM_HINT =
  'etd needs CAP_NET_ADMIN to change or read nftables rules: run it as root or grant the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN)';

let lib: LibNftables | undefined;

function load(): LibNftables {
  if (lib) return lib;
  let koffi: Koffi;
  try {
    // require, not import: koffi's native part then loads only when nftables is really used.
    koffi = createRequire(import.meta.url)('koffi') as Koffi;
  } catch (cause) {
    throw new EtdError('ETD_ERR_NFT_LOAD', `cannot load koffi (needed to call libnftables): ${String(cause)}`, {
      hint: "reinstall etd's dependencies (npm ci); koffi ships prebuilt binaries for linux x64/arm64",
      cause,
    });
  }
  const tried: string[] = [];
  // Registered once: koffi refuses a second type of the same name.
  const ctx = koffi.pointer('nft_ctx', koffi.opaque());
  for (const name of LIBRARY_NAMES) {
    let handle: ReturnType<Koffi['load']>;
    try {
      handle = koffi.load(name);
    } catch (cause) {
      tried.push(`${name}: ${cause instanceof Error ? cause.message : String(cause)}`);
      continue;
    }
    try {
      lib = {
        nft_ctx_new: handle.func('nft_ctx_new', ctx, ['uint32']),
        nft_ctx_free: handle.func('nft_ctx_free', 'void', [ctx]),
        nft_ctx_output_set_flags: handle.func('nft_ctx_output_set_flags', 'void', [ctx, 'uint32']),
        nft_ctx_set_dry_run: handle.func('nft_ctx_set_dry_run', 'void', [ctx, 'bool']),
        nft_ctx_buffer_output: handle.func('nft_ctx_buffer_output', 'int', [ctx]),
        nft_ctx_buffer_error: handle.func('nft_ctx_buffer_error', 'int', [ctx]),
        nft_run_cmd_from_buffer: handle.func('nft_run_cmd_from_buffer', 'int', [ctx, 'const char *']),
        nft_ctx_get_output_buffer: handle.func('nft_ctx_get_output_buffer', 'const char *', [ctx]),
        nft_ctx_get_error_buffer: handle.func('nft_ctx_get_error_buffer', 'const char *', [ctx]),
      };
      return lib;
    } catch (cause) {
      tried.push(`${name}: loaded, but a function is missing: ${cause instanceof Error ? cause.message : String(cause)}`);
    }
  }
  throw new EtdError('ETD_ERR_NFT_LOAD', `cannot load libnftables; tried ${tried.join('; ')}`, { hint: LOAD_HINT });
}

interface RawResult {
  readonly rc: number;
  readonly output: string;
  readonly error: string;
}

function exec(batch: string, opts: { json?: boolean; dryRun?: boolean } = {}): RawResult {
  const nft = load();
  const ctx = nft.nft_ctx_new(NFT_CTX_DEFAULT);
  if (!ctx) throw new EtdError('ETD_ERR_NFT', 'nft_ctx_new() returned NULL (out of memory?)');
  try {
    if (opts.json) nft.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
    if (opts.dryRun) nft.nft_ctx_set_dry_run(ctx, true);
    if (nft.nft_ctx_buffer_output(ctx) !== 0 || nft.nft_ctx_buffer_error(ctx) !== 0) {
      throw new EtdError('ETD_ERR_NFT', 'libnftables could not set up its output buffers');
    }
    const rc = nft.nft_run_cmd_from_buffer(ctx, batch);
    return { rc, output: nft.nft_ctx_get_output_buffer(ctx) ?? '', error: nft.nft_ctx_get_error_buffer(ctx) ?? '' };
  } finally {
    nft.nft_ctx_free(ctx);
  }
}

/** Meaningful lines of a batch with their 1-based line numbers (blank lines and comments dropped). */
function commandLines(batch: string): { readonly no: number; readonly text: string }[] {
  return batch
    .split('\n')
    .map((text, i) => ({ no: i + 1, text }))
    .filter((l) => l.text.trim() !== '' && !l.text.trim().startsWith('#'));
}

/**
 * Finds the first batch line whose prefix fails a dry run. Precondition: the whole batch failed with
 * a located error. Returns undefined when every prefix passes (e.g. an error only the commit sees).
 */
function locateFailingLine(batch: string): { readonly no: number; readonly text: string } | undefined {
  const lines = commandLines(batch);
  const fails = (n: number) =>
    exec(
      `${lines
        .slice(0, n)
        .map((l) => l.text)
        .join('\n')}\n`,
      { dryRun: true },
    ).rc !== 0;
  if (lines.length === 0 || !fails(lines.length)) return undefined;
  // Invariant: prefix(lo) passes (prefix(0) is empty), prefix(hi) fails.
  let lo = 0;
  let hi = lines.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (fails(mid)) hi = mid;
    else lo = mid;
  }
  return lines[hi - 1];
}

function nftError(batch: string, error: string, what: string): EtdError {
  const text = error.trimEnd();
  const messages = text.split('\n').filter((l) => /(^|: )Error: /.test(l) || /^Error/.test(l));
  const summary = messages.length ? messages.join('; ') : text || 'no error text (return code -1)';
  const eperm = /Operation not permitted/.test(text);
  let where = '';
  // A located error prints the (wrong, see above) echoed line and a caret line under it.
  const caret = text.split('\n').find((l) => /^\s*\^+~*\s*$/.test(l));
  if (caret && !eperm) {
    const line = locateFailingLine(batch);
    if (line) where = `\n  batch line ${line.no}: ${line.text}\n  ${' '.repeat(`batch line ${line.no}: `.length)}${caret.trimEnd()}`;
  }
  const hint = eperm
    ? EPERM_HINT
    : /No such file or directory/.test(text)
      ? 'a table, chain or set the batch refers to does not exist (or a kernel module, e.g. nft_tproxy or nft_socket, is missing)'
      : /Operation not supported|Protocol not supported/.test(text)
        ? 'the kernel lacks a needed nftables feature (nft_tproxy, nft_socket, nft_fib_inet) or the chain already exists with another type/priority'
        : undefined;
  return new EtdError('ETD_ERR_NFT', `${what}: libnftables: ${summary}${where}`, hint === undefined ? {} : { hint });
}

/**
 * Runs an nft batch (one command per line) as one atomic transaction and returns nft's output
 * (empty for most write commands). Throws ETD_ERR_NFT with libnftables' error text, the offending
 * batch line when it can be found, and a hint; ETD_ERR_NFT_LOAD when libnftables is unavailable.
 */
export function run(batch: string): string {
  const r = exec(batch);
  if (r.rc !== 0) throw nftError(batch, r.error, 'nft batch failed');
  return r.output;
}

/**
 * Runs a read command (e.g. `list table inet etd`) with JSON output and returns the parsed
 * document (`{ nftables: [...] }`). Throws like run(); ETD_ERR_NFT if the output is not JSON.
 */
export function runJson(command: string): unknown {
  const r = exec(command, { json: true });
  if (r.rc !== 0) throw nftError(command, r.error, `nft ${command.trim()} failed`);
  try {
    return JSON.parse(r.output) as unknown;
  } catch (cause) {
    throw new EtdError('ETD_ERR_NFT', `nft ${command.trim()}: output is not JSON: ${r.output.slice(0, 200)}`, { cause });
  }
}

/** True for an ETD_ERR_NFT that says the named object does not exist (ENOENT), e.g. listing an absent table. */
export function isNoSuchObject(e: unknown): boolean {
  return e instanceof EtdError && e.code === 'ETD_ERR_NFT' && /No such file or directory/.test(e.message);
}
