/**
 * The metrics the Rust functions publish through CloudWatch Embedded Metric Format.
 * These names are a contract with functions/: the dashboard and the alarms read them.
 *
 * Every dimension set includes `Stage` (the function's CVM_STAGE), so two deployments in one
 * account and region never mix their numbers. A metric is identified by all of its
 * dimensions: `Vends` is published with exactly [Stage, Outcome], the others with exactly
 * [Stage] unless noted.
 */
export const METRIC_NAMESPACE = 'CertificateVendingMachine';

export const STAGE_DIMENSION = 'Stage';
export const OUTCOME_DIMENSION = 'Outcome';

export const METRICS = {
  /** Count, dimensions [Stage, Outcome] (Outcome one of VEND_OUTCOMES or a newer one), one per `POST /v1/certificates`. */
  vends: 'Vends',
  /** Milliseconds: time to answer a vend request. */
  vendLatency: 'VendLatency',
  /** Count, dimensions [Stage, Outcome], one per `POST /v1/renewals` or `/v1/renewals/confirm`; `failed` is the function's fault. */
  renewals: 'Renewals',
  /** Milliseconds: time to answer a renewal request. */
  renewalLatency: 'RenewalLatency',
  /** Count: AWS calls the vend function saw throttled. */
  upstreamThrottles: 'UpstreamThrottles',
  /** Count: backoff windows opened on a serial after wrong tokens. */
  lockouts: 'Lockouts',
  /** Milliseconds: time the certificate provider took to answer AWS IoT. */
  providerLatency: 'ProviderLatency',
  /** Count: CSRs the certificate provider refused as the device's mistake (invalid CSR, subject refused). */
  providerRefusals: 'ProviderRefusals',
  /** Count: certificate-provider failures that are not the device's (Private CA errors, timeouts, mismatches). */
  providerFaults: 'ProviderFaults',
  /** Count, dimensions [Stage, Outcome] (Outcome one of HOOK_OUTCOMES), one per pre-provisioning hook invocation answered. */
  hookDecisions: 'HookDecisions',
  /** Milliseconds: time the pre-provisioning hook took to answer AWS IoT. */
  hookLatency: 'HookLatency',
  /** Count: pre-provisioning hook invocations that failed for a reason other than the device's (DynamoDB, AWS IoT errors). */
  hookFaults: 'HookFaults',
} as const;

/** The vend outcomes the dashboard and alarms name; the dashboard also shows any other outcome published. */
export const VEND_OUTCOMES = ['issued', 'replayed', 'rejected', 'conflict', 'locked', 'failed'] as const;
export const HOOK_OUTCOMES = ['allowed', 'denied'] as const;

/** AWS IoT abandons a certificate-provider or pre-provisioning-hook invocation after this long. */
export const IOT_DEADLINE_MS = 5000;
/** The latency alarms fire below the deadline, while there is still margin. */
export const LATENCY_ALARM_MS = 4000;
