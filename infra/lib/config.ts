/**
 * Deployment settings of the Certificate Vending Machine.
 *
 * Every setting comes from CDK context (`cdk deploy -c key=value`, or the
 * `context` block of cdk.json). Values given on the command line arrive as
 * strings, values from cdk.json keep their JSON type; both are accepted.
 * `loadConfig` validates everything once, before any construct is created, so
 * a wrong combination fails the synth with a message instead of producing a
 * stack that breaks at run time.
 */

export type IssuerMode = 'iot' | 'acm-pca';
export type CpuArchitecture = 'arm64' | 'x86_64';

/** Log retention periods CloudWatch Logs accepts, in days. */
const RETENTION_DAYS = [
  1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
];

export interface CvmConfig {
  /** Name of the deployment (dev, prod, ...): part of the stack name and dashboard name. */
  readonly stage: string;
  /** Who signs device certificates: Amazon's CA through AWS IoT, or an AWS Private CA. */
  readonly issuerMode: IssuerMode;
  /** Name of the AWS IoT policy this stack creates and the vend function attaches by default. */
  readonly policyName: string;
  /** Name of the AWS IoT role alias devices exchange their certificate against for AWS credentials. */
  readonly roleAliasName: string;
  /** Managed policies for the role behind the role alias (none by default: no AWS access). */
  readonly deviceRoleManagedPolicyArns: readonly string[];
  /** Lifetime of the credentials the role alias hands out. */
  readonly credentialDurationSeconds: number;
  /** An existing AWS Private CA to sign with (acm-pca mode, certificate provider). */
  readonly pcaArn?: string;
  /** Create a root AWS Private CA in this stack instead of using `pcaArn`. */
  readonly createPrivateCa: boolean;
  /** Subject common name of the created root CA. */
  readonly privateCaCommonName: string;
  /**
   * acm-pca mode: the Private CA is registered with AWS IoT as a CA certificate, so the vend
   * function registers device certificates with it (RegisterCertificate) instead of without
   * a CA (RegisterCertificateWithoutCA).
   */
  readonly pcaRegisteredWithIot: boolean;
  /** AWS Private CA certificate template for device certificates (the functions' default when unset). */
  readonly pcaTemplateArn?: string;
  /** Validity of device certificates AWS Private CA issues. */
  readonly validityDays: number;
  /** Regular expression the certificate provider requires of the CSR's common name. */
  readonly cnPattern?: string;
  /** CPU architecture of the Lambda functions. */
  readonly architecture: CpuArchitecture;
  /** Create the certificate-provider function and the AWS::IoT::CertificateProvider. */
  readonly certificateProvider: boolean;
  /** Name of the AWS::IoT::CertificateProvider. */
  readonly certificateProviderName: string;
  /** Steady-state request rate of the API's default stage (requests per second). */
  readonly throttleRateLimit: number;
  /** Burst of the API's default stage (requests). */
  readonly throttleBurstLimit: number;
  /** Reserved concurrency of the vend function; undefined leaves it unreserved. */
  readonly vendReservedConcurrency?: number;
  /** Reserved concurrency of the certificate-provider function; undefined leaves it unreserved. */
  readonly providerReservedConcurrency?: number;
  /** Wrong tokens in a row after which a serial is locked. */
  readonly maxFailedAttempts: number;
  /** AWS IoT data endpoint (iot:Data-ATS); looked up at run time when unset. */
  readonly iotDataEndpoint?: string;
  /** AWS IoT credentials-provider endpoint; looked up at run time when unset. */
  readonly iotCredentialsEndpoint?: string;
  /** Custom domain of the API (needs `certificateArn`). */
  readonly domainName?: string;
  /** ACM certificate for `domainName`, in the stack's region. */
  readonly certificateArn?: string;
  /** Retention of the functions' and the API's log groups, in days. */
  readonly logRetentionDays: number;
  /** SNS topic that receives alarm and OK notifications. */
  readonly alarmTopicArn?: string;
}

/** Reads one context key; `undefined` when it is not set. */
export type ContextReader = (key: string) => unknown;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export const CONTEXT_KEYS = [
  'stage',
  'issuerMode',
  'policyName',
  'roleAliasName',
  'deviceRoleManagedPolicyArns',
  'credentialDurationSeconds',
  'pcaArn',
  'createPrivateCa',
  'privateCaCommonName',
  'pcaRegisteredWithIot',
  'pcaTemplateArn',
  'validityDays',
  'cnPattern',
  'architecture',
  'certificateProvider',
  'certificateProviderName',
  'throttleRateLimit',
  'throttleBurstLimit',
  'vendReservedConcurrency',
  'providerReservedConcurrency',
  'maxFailedAttempts',
  'iotDataEndpoint',
  'iotCredentialsEndpoint',
  'domainName',
  'certificateArn',
  'logRetentionDays',
  'alarmTopicArn',
] as const;

const IOT_POLICY_NAME = /^[\w+=,.@-]{1,128}$/;
const ROLE_ALIAS_NAME = /^[\w=,@-]{1,128}$/;
const CERTIFICATE_PROVIDER_NAME = /^[\w=,@-]{1,128}$/;
const STAGE = /^[A-Za-z][A-Za-z0-9-]{0,31}$/;
const PCA_ARN = /^arn:aws[a-z-]*:acm-pca:[a-z0-9-]+:\d{12}:certificate-authority\/[0-9a-f-]{36}$/;
const PCA_TEMPLATE_ARN = /^arn:aws[a-z-]*:acm-pca:::template\/[A-Za-z0-9_]+\/V\d+$/;
const ACM_CERTIFICATE_ARN = /^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate\/[0-9a-f-]{36}$/;
const SNS_TOPIC_ARN = /^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$/;
const IAM_POLICY_ARN = /^arn:aws[a-z-]*:iam::(aws|\d{12}):policy\/[\w+=,.@/-]+$/;
const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;

function isUnset(value: unknown): boolean {
  return value === undefined || value === null || value === '';
}

function readString(get: ContextReader, key: string, pattern?: RegExp, hint?: string): string | undefined {
  const value = get(key);
  if (isUnset(value)) return undefined;
  if (typeof value !== 'string') {
    throw new ConfigError(`context "${key}" must be a string, got ${JSON.stringify(value)}`);
  }
  const trimmed = value.trim();
  if (pattern && !pattern.test(trimmed)) {
    throw new ConfigError(`context "${key}" is not valid: ${JSON.stringify(value)}${hint ? ` (${hint})` : ''}`);
  }
  return trimmed;
}

function readBoolean(get: ContextReader, key: string, fallback: boolean): boolean {
  const value = get(key);
  if (isUnset(value)) return fallback;
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw new ConfigError(`context "${key}" must be true or false, got ${JSON.stringify(value)}`);
}

function readInteger(get: ContextReader, key: string, fallback: number, min: number, max: number): number {
  const value = get(key);
  if (isUnset(value)) return fallback;
  const parsed = typeof value === 'number' ? value : typeof value === 'string' ? Number(value.trim()) : NaN;
  if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
    throw new ConfigError(
      `context "${key}" must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`,
    );
  }
  return parsed;
}

/** A reserved concurrency: a positive whole number, or "none" to leave the function unreserved. */
function readConcurrency(get: ContextReader, key: string, fallback: number): number | undefined {
  const value = get(key);
  if (value === 'none') return undefined;
  return readInteger(get, key, fallback, 1, 1000);
}

/** A list: a JSON array (cdk.json) or a comma-separated string (command line). */
function readList(get: ContextReader, key: string, pattern: RegExp): string[] {
  const value = get(key);
  if (isUnset(value)) return [];
  const items = Array.isArray(value)
    ? value
    : typeof value === 'string'
      ? value.split(',').map((item) => item.trim()).filter((item) => item !== '')
      : undefined;
  if (!items) {
    throw new ConfigError(`context "${key}" must be a list or a comma-separated string, got ${JSON.stringify(value)}`);
  }
  for (const item of items) {
    if (typeof item !== 'string' || !pattern.test(item)) {
      throw new ConfigError(`context "${key}" has an invalid entry: ${JSON.stringify(item)}`);
    }
  }
  return [...new Set(items as string[])];
}

function readOneOf<T extends string>(get: ContextReader, key: string, allowed: readonly T[], fallback: T): T {
  const value = get(key);
  if (isUnset(value)) return fallback;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(`context "${key}" must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value as T;
}

export function loadConfig(get: ContextReader): CvmConfig {
  const stage = readString(get, 'stage', STAGE, 'a letter, then letters, digits or dashes') ?? 'dev';
  const issuerMode = readOneOf<IssuerMode>(get, 'issuerMode', ['iot', 'acm-pca'], 'iot');
  const policyName = readString(get, 'policyName', IOT_POLICY_NAME) ?? 'cvm-device-default';
  const roleAliasName = readString(get, 'roleAliasName', ROLE_ALIAS_NAME) ?? 'cvm-device-role-alias';
  const deviceRoleManagedPolicyArns = readList(get, 'deviceRoleManagedPolicyArns', IAM_POLICY_ARN);
  // AWS IoT accepts 900 to 43200 seconds for a role alias.
  const credentialDurationSeconds = readInteger(get, 'credentialDurationSeconds', 3600, 900, 43200);

  const pcaArn = readString(get, 'pcaArn', PCA_ARN, 'arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>');
  const createPrivateCa = readBoolean(get, 'createPrivateCa', false);
  const privateCaCommonName = readString(get, 'privateCaCommonName') ?? 'Certificate Vending Machine Device Root CA';
  if (privateCaCommonName.length > 64) {
    throw new ConfigError('context "privateCaCommonName" must be at most 64 characters (X.520 upper bound)');
  }
  const pcaRegisteredWithIot = readBoolean(get, 'pcaRegisteredWithIot', false);
  const pcaTemplateArn = readString(get, 'pcaTemplateArn', PCA_TEMPLATE_ARN, 'arn:aws:acm-pca:::template/<name>/V<n>');
  const validityDays = readInteger(get, 'validityDays', 365, 1, 3650);
  const cnPattern = readString(get, 'cnPattern');
  const architecture = readOneOf<CpuArchitecture>(get, 'architecture', ['arm64', 'x86_64'], 'arm64');
  const certificateProvider = readBoolean(get, 'certificateProvider', false);
  const certificateProviderName =
    readString(get, 'certificateProviderName', CERTIFICATE_PROVIDER_NAME) ?? 'cvm-certificate-provider';

  const throttleRateLimit = readInteger(get, 'throttleRateLimit', 10, 1, 10000);
  const throttleBurstLimit = readInteger(get, 'throttleBurstLimit', 20, 1, 5000);

  // Reserved concurrency keeps the functions inside the AWS IoT control-plane quotas. A vend
  // holds its execution environment for about six sequential AWS round trips, at least ~0.7 s,
  // and calls CreateCertificateFromCsr and AttachPolicy once each (15 TPS quota each):
  // 10 concurrent vends make at most 10 / 0.7 ~ 14 calls per second. In acm-pca mode the vend
  // calls RegisterCertificateWithoutCA or RegisterCertificate instead (10 TPS quota):
  // 7 / 0.7 = 10 per second.
  // The certificate provider calls Private CA IssueCertificate once (25 TPS) and GetCertificate
  // a few times (75 TPS) per invocation of ~0.5 s or more: 10 concurrent stay under both.
  const vendReservedConcurrency = readConcurrency(get, 'vendReservedConcurrency', issuerMode === 'iot' ? 10 : 7);
  const providerReservedConcurrency = readConcurrency(get, 'providerReservedConcurrency', 10);

  const maxFailedAttempts = readInteger(get, 'maxFailedAttempts', 5, 1, 100);
  const iotDataEndpoint = readString(get, 'iotDataEndpoint', HOSTNAME, 'a host name, no scheme');
  const iotCredentialsEndpoint = readString(get, 'iotCredentialsEndpoint', HOSTNAME, 'a host name, no scheme');
  const domainName = readString(get, 'domainName', HOSTNAME, 'a host name, no scheme');
  const certificateArn = readString(get, 'certificateArn', ACM_CERTIFICATE_ARN);
  const logRetentionDays = readInteger(get, 'logRetentionDays', 365, 1, 3653);
  if (!RETENTION_DAYS.includes(logRetentionDays)) {
    throw new ConfigError(`context "logRetentionDays" must be one of ${RETENTION_DAYS.join(', ')}`);
  }
  const alarmTopicArn = readString(get, 'alarmTopicArn', SNS_TOPIC_ARN);

  if (pcaArn && createPrivateCa) {
    throw new ConfigError('give either "pcaArn" (an existing CA) or "createPrivateCa=true", not both');
  }
  const needsPca = issuerMode === 'acm-pca' || certificateProvider;
  if (needsPca && !pcaArn && !createPrivateCa) {
    throw new ConfigError(
      'issuerMode=acm-pca and certificateProvider=true sign with AWS Private CA: ' +
        'set "pcaArn" to an existing CA or "createPrivateCa=true"',
    );
  }
  if (!needsPca && (pcaArn || createPrivateCa)) {
    throw new ConfigError(
      'a Private CA is only used with issuerMode=acm-pca or certificateProvider=true; ' +
        'drop "pcaArn"/"createPrivateCa" or enable one of them',
    );
  }
  if (!needsPca && pcaTemplateArn) {
    throw new ConfigError('"pcaTemplateArn" configures AWS Private CA issuance: set issuerMode=acm-pca or certificateProvider=true');
  }
  if (pcaRegisteredWithIot && issuerMode !== 'acm-pca') {
    throw new ConfigError('"pcaRegisteredWithIot" applies to issuerMode=acm-pca only');
  }
  if (!certificateProvider && cnPattern) {
    throw new ConfigError('"cnPattern" configures the certificate provider: set certificateProvider=true');
  }
  if (Boolean(iotDataEndpoint) !== Boolean(iotCredentialsEndpoint)) {
    throw new ConfigError(
      'give both "iotDataEndpoint" and "iotCredentialsEndpoint", or neither (the function then looks both up)',
    );
  }
  if (cnPattern !== undefined) {
    try {
      new RegExp(cnPattern);
    } catch {
      throw new ConfigError(`context "cnPattern" is not a valid regular expression: ${JSON.stringify(cnPattern)}`);
    }
  }
  if (Boolean(domainName) !== Boolean(certificateArn)) {
    throw new ConfigError('a custom domain needs both "domainName" and "certificateArn"');
  }
  if (throttleBurstLimit < throttleRateLimit) {
    throw new ConfigError('"throttleBurstLimit" must be at least "throttleRateLimit"');
  }

  return {
    stage,
    issuerMode,
    policyName,
    roleAliasName,
    deviceRoleManagedPolicyArns,
    credentialDurationSeconds,
    pcaArn,
    createPrivateCa,
    privateCaCommonName,
    pcaRegisteredWithIot,
    pcaTemplateArn,
    validityDays,
    cnPattern,
    architecture,
    certificateProvider,
    certificateProviderName,
    throttleRateLimit,
    throttleBurstLimit,
    vendReservedConcurrency,
    providerReservedConcurrency,
    maxFailedAttempts,
    iotDataEndpoint,
    iotCredentialsEndpoint,
    domainName,
    certificateArn,
    logRetentionDays,
    alarmTopicArn,
  };
}
