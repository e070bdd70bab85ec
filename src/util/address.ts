// Address formatting and classification shared by every part of etd: "host:port", URL hosts, loopback.

/** "v4:port" or "[v6]:port". */
export function hostPort(address: string, port: number): string {
  return `${urlHost(address)}:${port}`;
}

/** The host part of a URL: an IPv6 address in brackets, anything else as it is. */
export function urlHost(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped form. */
export function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.') || address.toLowerCase().startsWith('::ffff:127.');
}
