/** Exponential backoff with full jitter, as the Rust client has it. */
export interface Backoff {
  /** The shortest wait, and the first ceiling, in ms (default 500). */
  min: number;
  /** The longest wait, in ms (default 20,000). */
  max: number;
  /** How much the ceiling grows per failed attempt (default 2). */
  factor: number;
}

/** The defaults: 0.5 s, growing twofold up to 20 s. */
export const DEFAULT_BACKOFF: Backoff = { min: 500, max: 20_000, factor: 2 };

/** The ceiling before attempt `attempt` (0 for the first retry): `min · factor^attempt`, at most `max`. */
export function ceiling(backoff: Backoff, attempt: number): number {
  const min = Math.min(backoff.min, backoff.max);
  const grown = min * Math.pow(Math.max(backoff.factor, 1), Math.min(attempt, 64));
  return Number.isFinite(grown) ? Math.max(min, Math.min(grown, backoff.max)) : backoff.max;
}

/**
 * The wait before attempt `attempt`: uniformly random between `min` and the ceiling, so
 * that clients that lost one server at the same moment do not come back at once.
 */
export function delay(backoff: Backoff, attempt: number, random: () => number): number {
  const min = Math.min(backoff.min, backoff.max);
  return min + (ceiling(backoff, attempt) - min) * random();
}
