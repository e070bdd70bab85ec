// Two-way pipe between client and server: backpressure, half-close, idle timeouts, and the termination cause.

import type net from 'node:net';
import { CommandWatcher, PipeconnectStripper } from './smtpFilter.js';

export interface RelayOwner {
  /** Called once, after both sockets have closed. */
  onRelayEnd(cause: string): void;
}

const kRelay = Symbol('etd.relay');
const kSide = Symbol('etd.side');
type Side = 'client' | 'server';
type RelaySocket = net.Socket & { [kRelay]?: Relay; [kSide]?: Side };

/** How long a half-dead session may linger after one side failed before it is torn down. */
const LINGER_MS = 10_000;

// Module-level handlers (no per-session closures): each finds its relay through the socket.
function onEnd(this: RelaySocket): void {
  this[kRelay]?.sideEnded(this[kSide] as Side);
}
function onError(this: RelaySocket, err: NodeJS.ErrnoException): void {
  this[kRelay]?.sideFailed(this[kSide] as Side, err);
}
function onTimeout(this: RelaySocket): void {
  this[kRelay]?.sideIdle(this[kSide] as Side);
}
function onClose(this: RelaySocket): void {
  this[kRelay]?.sideClosed(this[kSide] as Side);
}

export class Relay {
  private cause: string | undefined;
  private open = 2;
  private lingerTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: net.Socket,
    private readonly server: net.Socket,
    private readonly clientIdleMs: number,
    private readonly serverIdleMs: number,
    private readonly owner: RelayOwner,
  ) {}

  /**
   * Starts relaying. `pending` are client bytes already read (action: log) to send first.
   * With `guard`, PIPECONNECT is stripped from the backend's EHLO reply (see smtpFilter.ts).
   */
  start(pending: readonly Buffer[] = [], guard = false): void {
    for (const [sock, side] of [
      [this.client, 'client'],
      [this.server, 'server'],
    ] as const) {
      const s = sock as RelaySocket;
      s[kRelay] = this;
      s[kSide] = side;
      s.on('end', onEnd);
      s.on('error', onError);
      s.on('timeout', onTimeout);
      s.on('close', onClose);
      if (s.destroyed) this.open--;
    }
    this.client.setTimeout(this.clientIdleMs);
    this.server.setTimeout(this.serverIdleMs);
    for (const chunk of pending) this.server.write(chunk);
    if (guard) {
      const stripper = new PipeconnectStripper();
      this.client.pipe(new CommandWatcher(() => stripper.stop())).pipe(this.server);
      this.server.pipe(stripper).pipe(this.client);
    } else {
      this.client.pipe(this.server);
      this.server.pipe(this.client);
    }
    this.client.resume();
    this.server.resume();
    if (this.open <= 0) this.finish();
  }

  /** Ends the session now (shutdown, operator action). */
  abort(cause: string): void {
    this.note(cause);
    this.client.destroy();
    this.server.destroy();
  }

  sideEnded(side: Side): void {
    // pipe() forwards the FIN to the other side: a half-close, and the other direction goes on.
    this.note(side === 'client' ? 'client_closed' : 'server_closed');
  }

  sideFailed(side: Side, err: NodeJS.ErrnoException): void {
    const code = err.code === 'ECONNRESET' ? 'reset' : err.code === 'EPIPE' ? 'reset' : 'error';
    this.note(`${side}_${code}`);
    if (side === 'client') {
      // The client is gone: the backend must not take a half-sent message as complete.
      this.server.destroy();
    } else {
      // The backend failed: give the client a clean close, then make sure it goes away.
      this.client.end();
      this.linger();
    }
  }

  sideIdle(side: Side): void {
    this.note(`${side}_timeout`);
    this.client.destroy();
    this.server.destroy();
  }

  sideClosed(side: Side): void {
    this.open--;
    if (this.open === 1) {
      // One side is fully closed; the other may still be flushing. Bound how long it may take.
      const other = side === 'client' ? this.server : this.client;
      if (!other.writableEnded) other.end();
      this.linger();
    }
    if (this.open === 0) this.finish();
  }

  private linger(): void {
    if (this.lingerTimer) return;
    this.lingerTimer = setTimeout(() => {
      this.client.destroy();
      this.server.destroy();
    }, LINGER_MS);
    this.lingerTimer.unref();
  }

  private note(cause: string): void {
    this.cause ??= cause;
  }

  private finish(): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    for (const s of [this.client, this.server] as RelaySocket[]) {
      s.removeListener('end', onEnd);
      s.removeListener('error', onError);
      s.removeListener('timeout', onTimeout);
      s.removeListener('close', onClose);
      // A late 'error' after close must not become an uncaught exception.
      s.on('error', noop);
      delete s[kRelay];
    }
    this.owner.onRelayEnd(this.cause ?? 'closed');
  }
}

function noop(): void {}
