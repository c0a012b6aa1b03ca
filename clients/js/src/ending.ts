/** What a close code, or a refused upgrade, means for the next attempt (docs/protocol.md). */
export type Next =
  | { kind: "retry"; atLeast: number }
  | { kind: "refresh_token" }
  | { kind: "retry_without_since" }
  | { kind: "stop" };

/** After the server closed with `code`. `backoffMax` is the longest backoff wait, in ms. */
export function afterClose(code: number, backoffMax: number): Next {
  switch (code) {
    // Protocol error, binary, bad UTF-8, too large, invalid token: retrying repeats them.
    case 1002:
    case 1003:
    case 1007:
    case 1009:
    case 4003:
      return { kind: "stop" };
    // Over the inbound rate limit: slow down.
    case 1008:
      return { kind: "retry", atLeast: backoffMax };
    case 4004:
      return { kind: "refresh_token" };
    default:
      return { kind: "retry", atLeast: 0 };
  }
}

/** After the upgrade was refused with HTTP `status` (seen only where the WebSocket implementation shows it). */
export function afterRefusal(status: number, code: string | undefined, retryAfterMs: number | undefined): Next {
  if (status === 400 && code === "invalid_since") return { kind: "retry_without_since" };
  if (status === 429 || status === 503) return { kind: "retry", atLeast: retryAfterMs ?? 0 };
  if (status >= 400 && status < 500) return { kind: "stop" };
  return { kind: "retry", atLeast: 0 };
}
