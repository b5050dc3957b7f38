/**
 * The metrics the Rust functions publish through CloudWatch Embedded Metric Format.
 * These names are a contract with functions/: the dashboard and the alarms read them.
 */
export const METRIC_NAMESPACE = 'CertificateVendingMachine';

export const METRICS = {
  /** Count, dimension `Outcome` (one of VEND_OUTCOMES), one per vend request. */
  vends: 'Vends',
  /** Milliseconds, no dimension: time to answer a vend request. */
  vendLatency: 'VendLatency',
  /** Count, no dimension: AWS calls the vend function saw throttled. */
  upstreamThrottles: 'UpstreamThrottles',
  /** Count, no dimension: serials locked after too many wrong tokens. */
  lockouts: 'Lockouts',
  /** Milliseconds, no dimension: time the certificate provider took to answer AWS IoT. */
  providerLatency: 'ProviderLatency',
  /** Count, no dimension: certificate-provider invocations that returned an error. */
  providerErrors: 'ProviderErrors',
} as const;

export const OUTCOME_DIMENSION = 'Outcome';
export const VEND_OUTCOMES = ['issued', 'replayed', 'rejected', 'conflict', 'locked', 'failed'] as const;

/** AWS IoT abandons a certificate-provider invocation after this long. */
export const PROVIDER_DEADLINE_MS = 5000;
/** The provider latency alarm fires below the deadline, while there is still margin. */
export const PROVIDER_LATENCY_ALARM_MS = 4000;
