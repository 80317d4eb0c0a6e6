// Type declarations for oip-media-client (CommonJS).

/** An OIP record as the indexer stores it: `data.<category>.<key>` fields and an `oip` block. */
export interface OipRecord {
  data?: Record<string, unknown>;
  oip?: { did?: string; didTx?: string; recordType?: string; [key: string]: unknown };
  [key: string]: unknown;
}

/** The indexer's addRecipeNutritionalSummary(record, recordsInDB): a record with a summary added. */
export type RecipeSummary = (record: OipRecord, recordsInDB: OipRecord[]) => OipRecord | Promise<OipRecord>;

/**
 * The indexer's `resolveRecords` (helpers/utils.js), same signature and results, answered by
 * oip-media's POST /api/resolve. Never rejects: on any failure the record comes back as given,
 * its DIDs in place. Never changes `record` or `recordsInDB`.
 */
export function resolveRecords(
  record: OipRecord,
  resolveDepth: number,
  recordsInDB?: OipRecord[],
  resolveNamesOnly?: boolean,
  summarizeRecipe?: boolean,
  addRecipeNutritionalSummary?: RecipeSummary | null,
  visited?: Set<string>,
  resolveFieldNames?: string[] | string | null,
  currentDepth?: number,
): Promise<OipRecord>;

/** Settings; each has an environment variable (README.md). */
export interface ClientOptions {
  /** OIP_MEDIA_URL: oip-media's base URL, e.g. http://oip-media:8080. Unset: records pass through unresolved. */
  url?: string | null;
  /** OIP_MEDIA_RESOLVE_TIMEOUT_MS (25000): whole-request limit. */
  timeoutMs?: number;
  /** OIP_MEDIA_RESOLVE_BATCH_MAX (100): records per request. */
  batchMax?: number;
  /** OIP_MEDIA_RESOLVE_BATCH_BYTES (4 MiB): request body bytes (the server refuses past 8 MiB). */
  batchBytes?: number;
  /** OIP_MEDIA_RESOLVE_MAX_IN_FLIGHT (4): requests in flight per process. */
  maxInFlight?: number;
  /** OIP_MEDIA_RESOLVE_MAX_QUEUED (20000): records waiting for a request; past it, returned unresolved. */
  maxQueuedRecords?: number;
  /** OIP_MEDIA_MAX_SOCKETS (8): keep-alive connections to oip-media. */
  maxSockets?: number;
  /** OIP_MEDIA_RESOLVE_MAX_RESPONSE_BYTES (64 MiB): largest answer read. */
  maxResponseBytes?: number;
  /** OIP_MEDIA_RETRY_AFTER_MAX_MS (2000): longest wait on a 503's Retry-After. */
  retryAfterMaxMs?: number;
  /** OIP_MEDIA_BREAKER_THRESHOLD (5): consecutive failures that open the circuit. */
  breakerThreshold?: number;
  /** OIP_MEDIA_BREAKER_COOLDOWN_MS (10000): how long it stays open before one probe. */
  breakerCooldownMs?: number;
  /** OIP_MEDIA_WARN_INTERVAL_MS (10000): at most one warning of a kind per interval. */
  warnIntervalMs?: number;
  /** Where warnings go (console by default). */
  logger?: { warn(message: string): void };
  /** Called when the server says a record was cut short by a bound (its recordStats). */
  onBoundsHit?: (did: string, recordStats: { boundsHit: string[]; [counter: string]: unknown }) => void;
}

export interface ClientStats {
  calls: number;
  requests: number;
  batches: number;
  resolved: number;
  unresolved: number;
  shed: number;
  retries: number;
  splits: number;
  failures: number;
  breakerSkips: number;
  queueFull: number;
  boundsHit: number;
  summaryErrors: number;
  inFlight: number;
  queuedRecords: number;
  breakerOpen: boolean;
}

export class Client {
  constructor(options?: ClientOptions);
  resolveRecords: typeof resolveRecords;
  stats(): ClientStats;
  /** Closes idle keep-alive sockets. */
  close(): void;
}

/** A client; settings not given come from the environment, then the defaults. */
export function createClient(options?: ClientOptions): Client;
/** The process's client, configured from the environment on first use (what resolveRecords uses). */
export function defaultClient(): Client;
/** The settings the environment names. */
export function configFromEnv(env?: Record<string, string | undefined>): ClientOptions;
export const DEFAULTS: Readonly<Required<Omit<ClientOptions, 'logger' | 'onBoundsHit'>>>;
export const ENV: Readonly<Record<string, string>>;
