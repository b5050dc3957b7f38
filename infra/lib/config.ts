/**
 * Deployment settings of the Certificate Vending Machine.
 *
 * Every deployment is a stage with a committed file, `infra/stages/<stage>.json`, chosen with
 * `-c stage=<stage>` (required). A setting's value comes from, in this order of precedence:
 *
 *   1. CDK context: `-c key=value` on the command line (or the `context` block of cdk.json);
 *   2. the stage file;
 *   3. the built-in default.
 *
 * Values given on the command line arrive as strings, values from JSON files keep their JSON
 * type; both are accepted. Three keys belong to the stage file alone and cannot be overridden
 * from the command line: `account`, `region` (where the stage deploys) and
 * `ownsAccountSingletons` (see lib/stages.ts). `loadConfig` validates everything once, before
 * any construct is created, so a wrong combination fails the synth with a message instead of
 * producing a stack that breaks at run time.
 */

export type IssuerMode = 'iot' | 'acm-pca';
export type CpuArchitecture = 'arm64' | 'x86_64';

/** Log retention periods CloudWatch Logs accepts, in days. */
const RETENTION_DAYS = [
  1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
];

export interface CvmConfig {
  /** Name of the deployment (dev, prod, ...): its stage file, the stack name, the `Stage` metric dimension. */
  readonly stage: string;
  /** AWS account the stage deploys to (stage file only); unset deploys to the credentials' account. */
  readonly account?: string;
  /** AWS region the stage deploys to (stage file only); unset deploys to the credentials' region. */
  readonly region?: string;
  /** CloudFormation termination protection of the stack (true for production stages). */
  readonly terminationProtection: boolean;
  /**
   * This stage may create the account-wide singletons (the certificate provider, the Device
   * Defender audit configuration). Stage file only; at most one stage per account.
   */
  readonly ownsAccountSingletons: boolean;
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
  /** Publish a CRL for the created root CA (private S3 bucket, served through CloudFront). */
  readonly crl: boolean;
  /**
   * acm-pca mode: the Private CA is registered with AWS IoT as a CA certificate, so the vend
   * function registers device certificates with it (RegisterCertificate) instead of without
   * a CA (RegisterCertificateWithoutCA).
   */
  readonly pcaRegisteredWithIot: boolean;
  /**
   * AWS Private CA certificate template for device certificates; unset means the end-entity
   * client-authentication template (EndEntityClientAuthCertificate/V1) of the stack's partition.
   */
  readonly pcaTemplateArn?: string;
  /** Validity of device certificates AWS Private CA issues. */
  readonly validityDays: number;
  /** Regular expression the certificate provider requires of the CSR's common name. */
  readonly cnPattern?: string;
  /** CPU architecture of the Lambda functions. */
  readonly architecture: CpuArchitecture;
  /** Create the certificate-provider function and the AWS::IoT::CertificateProvider (account singleton). */
  readonly certificateProvider: boolean;
  /** Name of the AWS::IoT::CertificateProvider. */
  readonly certificateProviderName: string;
  /** Fleet provisioning by claim: provisioning template, pre-provisioning hook, claim policy. */
  readonly fleetProvisioning: boolean;
  /** Name of the fleet-provisioning template (part of the RegisterThing MQTT topic). */
  readonly provisioningTemplateName: string;
  /** Name of the AWS IoT policy for claim certificates. */
  readonly claimPolicyName: string;
  /** When set, claim certificates may connect only with client IDs that start with it. */
  readonly claimClientIdPrefix?: string;
  /** Device Defender audit of expiring device certificates (account singleton). */
  readonly deviceDefenderAudit: boolean;
  /** Steady-state request rate of the API's default stage (requests per second). */
  readonly throttleRateLimit: number;
  /** Burst of the API's default stage (requests). */
  readonly throttleBurstLimit: number;
  /** Reserved concurrency of the vend function; undefined leaves it unreserved. */
  readonly vendReservedConcurrency?: number;
  /** Reserved concurrency of the certificate-provider function; undefined leaves it unreserved. */
  readonly providerReservedConcurrency?: number;
  /** Reserved concurrency of the pre-provisioning hook; undefined leaves it unreserved. */
  readonly hookReservedConcurrency?: number;
  /** Wrong tokens a serial may see before the backoff starts slowing it down. */
  readonly lockoutFreeAttempts: number;
  /** Longest window the backoff closes a serial for, in seconds. */
  readonly lockoutMaxSeconds: number;
  /** How long a renewed device has to confirm its new certificate, in hours. */
  readonly renewalGraceHours: number;
  /** How long after its certificate expired a device may still renew, in days. */
  readonly renewalExpiredGraceDays: number;
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

/** Settings a stage file holds and `-c key=value` may override. */
export const CONTEXT_KEYS = [
  'terminationProtection',
  'issuerMode',
  'policyName',
  'roleAliasName',
  'deviceRoleManagedPolicyArns',
  'credentialDurationSeconds',
  'pcaArn',
  'createPrivateCa',
  'privateCaCommonName',
  'crl',
  'pcaRegisteredWithIot',
  'pcaTemplateArn',
  'validityDays',
  'cnPattern',
  'architecture',
  'certificateProvider',
  'certificateProviderName',
  'fleetProvisioning',
  'provisioningTemplateName',
  'claimPolicyName',
  'claimClientIdPrefix',
  'deviceDefenderAudit',
  'throttleRateLimit',
  'throttleBurstLimit',
  'vendReservedConcurrency',
  'providerReservedConcurrency',
  'hookReservedConcurrency',
  'lockoutFreeAttempts',
  'lockoutMaxSeconds',
  'renewalGraceHours',
  'renewalExpiredGraceDays',
  'iotDataEndpoint',
  'iotCredentialsEndpoint',
  'domainName',
  'certificateArn',
  'logRetentionDays',
  'alarmTopicArn',
] as const;

/** Keys only a stage file may set: where the stage deploys and what it owns in the account. */
export const STAGE_FILE_ONLY_KEYS = ['account', 'region', 'ownsAccountSingletons'] as const;

/** Keys a stage file may hold: the settings, the stage-only keys, and a free-text description. */
export const STAGE_FILE_KEYS: readonly string[] = [...CONTEXT_KEYS, ...STAGE_FILE_ONLY_KEYS, 'description'];

/** Settings that were renamed, with what replaces them; an old name is refused, not ignored. */
const RENAMED_KEYS: Record<string, string> = {
  maxFailedAttempts: '"lockoutFreeAttempts" (wrong tokens before the backoff) and "lockoutMaxSeconds" (its longest window)',
};

export const STAGE_NAME = /^[A-Za-z][A-Za-z0-9-]{0,31}$/;
const IOT_POLICY_NAME = /^[\w+=,.@-]{1,128}$/;
const ROLE_ALIAS_NAME = /^[\w=,@-]{1,128}$/;
const CERTIFICATE_PROVIDER_NAME = /^[\w=,@-]{1,128}$/;
// CreateProvisioningTemplate: templateName is 1 to 36 of [0-9A-Za-z_-].
const PROVISIONING_TEMPLATE_NAME = /^[0-9A-Za-z_-]{1,36}$/;
// MQTT client IDs AWS IoT accepts: up to 128 bytes; a prefix of plain characters leaves room for the rest.
const CLIENT_ID_PREFIX = /^[A-Za-z0-9_:.-]{1,64}$/;
const ACCOUNT_ID = /^\d{12}$/;
const REGION = /^[a-z]{2}(-[a-z]+)+-\d$/;
const PCA_ARN = /^arn:aws[a-z-]*:acm-pca:[a-z0-9-]+:\d{12}:certificate-authority\/[0-9a-f-]{36}$/;
const PCA_TEMPLATE_ARN = /^arn:aws[a-z-]*:acm-pca:::template\/([A-Za-z0-9_]+)\/V\d+$/;
const ACM_CERTIFICATE_ARN = /^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate\/[0-9a-f-]{36}$/;
const SNS_TOPIC_ARN = /^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$/;
const IAM_POLICY_ARN = /^arn:aws[a-z-]*:iam::(aws|\d{12}):policy\/[\w+=,.@/-]+$/;
const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;

/** The AWS Private CA template device certificates get unless another end-entity template is configured. */
export const DEFAULT_PCA_TEMPLATE = 'EndEntityClientAuthCertificate/V1';

/**
 * Why a Private CA template cannot sign device certificates, or undefined when it can.
 * Device certificates are end-entity certificates used for TLS client authentication, so only
 * AWS Private CA's EndEntity* templates qualify: a CA template (RootCACertificate,
 * SubordinateCACertificate_PathLen*) would let a device certificate sign others; a server-only
 * template lacks the clientAuth usage AWS IoT's mTLS needs; a CSR-passthrough template copies
 * extensions the device chose into its certificate.
 */
export function pcaTemplateProblem(templateName: string): string | undefined {
  if (!templateName.startsWith('EndEntity')) {
    return (
      `${templateName || 'the template'} is not an EndEntity* template: device certificates are end-entity ` +
      'certificates for TLS client authentication (a CA template would make them CA certificates, blank and ' +
      `special-purpose templates lack those usages); use one such as ${DEFAULT_PCA_TEMPLATE}`
    );
  }
  if (templateName.startsWith('EndEntityServerAuth')) {
    return `${templateName} issues server certificates only; AWS IoT needs TLS client authentication`;
  }
  if (templateName.includes('CSRPassthrough')) {
    return `${templateName} copies extensions from the device's CSR; the device must not choose its certificate's extensions`;
  }
  return undefined;
}

/** Where one setting comes from, for messages. */
type Origin = (key: string) => string;

class SettingsReader {
  constructor(
    private readonly get: ContextReader,
    private readonly origin: Origin,
  ) {}

  private where(key: string): string {
    return `setting "${key}" (${this.origin(key)})`;
  }

  raw(key: string): unknown {
    return this.get(key);
  }

  string(key: string, pattern?: RegExp, hint?: string): string | undefined {
    const value = this.get(key);
    if (isUnset(value)) return undefined;
    if (typeof value !== 'string') {
      throw new ConfigError(`${this.where(key)} must be a string, got ${JSON.stringify(value)}`);
    }
    const trimmed = value.trim();
    if (pattern && !pattern.test(trimmed)) {
      throw new ConfigError(`${this.where(key)} is not valid: ${JSON.stringify(value)}${hint ? ` (${hint})` : ''}`);
    }
    return trimmed;
  }

  boolean(key: string, fallback: boolean): boolean {
    const value = this.get(key);
    if (isUnset(value)) return fallback;
    if (value === true || value === 'true') return true;
    if (value === false || value === 'false') return false;
    throw new ConfigError(`${this.where(key)} must be true or false, got ${JSON.stringify(value)}`);
  }

  integer(key: string, fallback: number, min: number, max: number): number {
    const value = this.get(key);
    if (isUnset(value)) return fallback;
    const parsed = typeof value === 'number' ? value : typeof value === 'string' ? Number(value.trim()) : NaN;
    if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
      throw new ConfigError(`${this.where(key)} must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    return parsed;
  }

  /** A reserved concurrency: a positive whole number, or "none" to leave the function unreserved. */
  concurrency(key: string, fallback: number): number | undefined {
    if (this.get(key) === 'none') return undefined;
    return this.integer(key, fallback, 1, 1000);
  }

  /** A list: a JSON array (stage file, cdk.json) or a comma-separated string (command line). */
  list(key: string, pattern: RegExp): string[] {
    const value = this.get(key);
    if (isUnset(value)) return [];
    const items = Array.isArray(value)
      ? value
      : typeof value === 'string'
        ? value
            .split(',')
            .map((item) => item.trim())
            .filter((item) => item !== '')
        : undefined;
    if (!items) {
      throw new ConfigError(`${this.where(key)} must be a list or a comma-separated string, got ${JSON.stringify(value)}`);
    }
    for (const item of items) {
      if (typeof item !== 'string' || !pattern.test(item)) {
        throw new ConfigError(`${this.where(key)} has an invalid entry: ${JSON.stringify(item)}`);
      }
    }
    return [...new Set(items as string[])];
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], fallback: T): T {
    const value = this.get(key);
    if (isUnset(value)) return fallback;
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
      throw new ConfigError(`${this.where(key)} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
    }
    return value as T;
  }
}

function isUnset(value: unknown): boolean {
  return value === undefined || value === null || value === '';
}

/** A stage's committed settings: the parsed JSON object of `infra/stages/<stage>.json`. */
export interface StageFile {
  readonly name: string;
  /** Path shown in messages, relative to infra/. */
  readonly path: string;
  readonly settings: Readonly<Record<string, unknown>>;
}

export type StageCatalog = ReadonlyMap<string, StageFile>;

export interface LoadedConfig {
  readonly config: CvmConfig;
  /** Settings the command line (or cdk.json) set over the stage file's value or default, with their values. */
  readonly overrides: Readonly<Record<string, unknown>>;
}

/**
 * The settings of the stage named by `-c stage=<name>`: its stage file, with context values
 * taking precedence. Refuses a missing or unknown stage, a context value for a key only a
 * stage file may set, and a renamed setting.
 */
export function loadConfig(context: ContextReader, stages: StageCatalog): LoadedConfig {
  const known = [...stages.keys()].sort().join(', ') || 'none';
  const stageValue = context('stage');
  if (isUnset(stageValue)) {
    throw new ConfigError(`choose a stage with -c stage=<name>; the committed stages are: ${known} (infra/stages/*.json)`);
  }
  if (typeof stageValue !== 'string' || !STAGE_NAME.test(stageValue)) {
    throw new ConfigError(`"stage" must be a letter, then letters, digits or dashes, got ${JSON.stringify(stageValue)}`);
  }
  const file = stages.get(stageValue);
  if (!file) {
    throw new ConfigError(
      `unknown stage "${stageValue}": the committed stages are ${known}; ` +
        `a new stage needs its settings committed as infra/stages/${stageValue}.json`,
    );
  }
  for (const key of STAGE_FILE_ONLY_KEYS) {
    if (!isUnset(context(key))) {
      throw new ConfigError(`"${key}" is set in ${file.path} only, not on the command line`);
    }
  }
  for (const [old, replacement] of Object.entries(RENAMED_KEYS)) {
    if (!isUnset(context(old))) throw new ConfigError(`setting "${old}" was renamed: use ${replacement}`);
  }

  const overrides: Record<string, unknown> = {};
  const fromContext = new Set<string>();
  for (const key of CONTEXT_KEYS) {
    const value = context(key);
    if (!isUnset(value)) {
      fromContext.add(key);
      overrides[key] = value;
    }
  }
  const config = parseSettings(
    file.name,
    (key) => (fromContext.has(key) ? context(key) : file.settings[key]),
    (key) => (fromContext.has(key) ? 'from -c' : `from ${file.path}`),
  );
  return { config, overrides };
}

/** The settings of a stage file alone, as committed (no context). */
export function stageFileConfig(file: StageFile): CvmConfig {
  for (const key of Object.keys(file.settings)) {
    if (RENAMED_KEYS[key]) throw new ConfigError(`${file.path}: setting "${key}" was renamed: use ${RENAMED_KEYS[key]}`);
    if (!STAGE_FILE_KEYS.includes(key)) {
      throw new ConfigError(`${file.path}: unknown setting "${key}" (known: ${STAGE_FILE_KEYS.join(', ')})`);
    }
  }
  return parseSettings(
    file.name,
    (key) => file.settings[key],
    () => `from ${file.path}`,
  );
}

function parseSettings(stage: string, get: ContextReader, origin: Origin): CvmConfig {
  const s = new SettingsReader(get, origin);

  const account = s.string('account', ACCOUNT_ID, 'twelve digits');
  const region = s.string('region', REGION, 'a region code such as eu-west-1');
  const terminationProtection = s.boolean('terminationProtection', false);
  const ownsAccountSingletons = s.boolean('ownsAccountSingletons', false);
  const issuerMode = s.oneOf<IssuerMode>('issuerMode', ['iot', 'acm-pca'], 'iot');
  const policyName = s.string('policyName', IOT_POLICY_NAME) ?? 'cvm-device-default';
  const roleAliasName = s.string('roleAliasName', ROLE_ALIAS_NAME) ?? 'cvm-device-role-alias';
  const deviceRoleManagedPolicyArns = s.list('deviceRoleManagedPolicyArns', IAM_POLICY_ARN);
  // AWS IoT accepts 900 to 43200 seconds for a role alias.
  const credentialDurationSeconds = s.integer('credentialDurationSeconds', 3600, 900, 43200);

  const pcaArn = s.string('pcaArn', PCA_ARN, 'arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>');
  const createPrivateCa = s.boolean('createPrivateCa', false);
  const privateCaCommonName = s.string('privateCaCommonName') ?? 'Certificate Vending Machine Device Root CA';
  if (privateCaCommonName.length > 64) {
    throw new ConfigError('setting "privateCaCommonName" must be at most 64 characters (X.520 upper bound)');
  }
  const crl = s.boolean('crl', false);
  const pcaRegisteredWithIot = s.boolean('pcaRegisteredWithIot', false);
  const pcaTemplateArn = s.string('pcaTemplateArn', PCA_TEMPLATE_ARN, 'arn:aws:acm-pca:::template/<name>/V<n>');
  if (pcaTemplateArn) {
    const problem = pcaTemplateProblem(PCA_TEMPLATE_ARN.exec(pcaTemplateArn)?.[1] ?? '');
    if (problem) throw new ConfigError(`setting "pcaTemplateArn" (${origin('pcaTemplateArn')}): ${problem}`);
  }
  const validityDays = s.integer('validityDays', 365, 1, 3650);
  const cnPattern = s.string('cnPattern');
  const architecture = s.oneOf<CpuArchitecture>('architecture', ['arm64', 'x86_64'], 'arm64');
  const certificateProvider = s.boolean('certificateProvider', false);
  const certificateProviderName = s.string('certificateProviderName', CERTIFICATE_PROVIDER_NAME) ?? 'cvm-certificate-provider';
  const fleetProvisioning = s.boolean('fleetProvisioning', false);
  const provisioningTemplateName =
    s.string('provisioningTemplateName', PROVISIONING_TEMPLATE_NAME, 'up to 36 letters, digits, _ or -') ??
    'cvm-fleet-provisioning';
  const claimPolicyName = s.string('claimPolicyName', IOT_POLICY_NAME) ?? 'cvm-claim';
  const claimClientIdPrefixGiven = s.string('claimClientIdPrefix', CLIENT_ID_PREFIX, 'letters, digits, _ : . or -');
  const deviceDefenderAudit = s.boolean('deviceDefenderAudit', false);

  const throttleRateLimit = s.integer('throttleRateLimit', 10, 1, 10000);
  const throttleBurstLimit = s.integer('throttleBurstLimit', 20, 1, 5000);

  // Reserved concurrency keeps the functions inside the AWS IoT control-plane quotas. A vend
  // holds its execution environment for five sequential AWS round trips, at least ~0.7 s,
  // and calls CreateCertificateFromCsr and AttachPolicy once each (15 TPS quota each):
  // 10 concurrent vends make at most 10 / 0.7 ~ 14 calls per second, and the service spaces
  // the retries of throttled ones by the quota (Retry-After). In acm-pca mode the vend
  // calls RegisterCertificateWithoutCA or RegisterCertificate instead (10 TPS quota):
  // 7 / 0.7 = 10 per second.
  // The certificate provider calls Private CA IssueCertificate once (25 TPS) and GetCertificate
  // a few times (75 TPS) per invocation of ~0.5 s or more: 10 concurrent stay under both.
  // The pre-provisioning hook makes one or two DynamoDB calls per RegisterThing; its
  // reservation is a guarantee rather than a cap: AWS IoT gives it 5 s, and a hook throttled
  // because other functions used up the account's pool refuses a legitimate device.
  const vendReservedConcurrency = s.concurrency('vendReservedConcurrency', issuerMode === 'iot' ? 10 : 7);
  const providerReservedConcurrency = s.concurrency('providerReservedConcurrency', 10);
  const hookReservedConcurrency = s.concurrency('hookReservedConcurrency', 10);

  const lockoutFreeAttempts = s.integer('lockoutFreeAttempts', 5, 1, 100);
  // The backoff's first window is 30 s; its longest is at least that and at most a day.
  const lockoutMaxSeconds = s.integer('lockoutMaxSeconds', 900, 30, 86400);
  const renewalGraceHours = s.integer('renewalGraceHours', 168, 1, 2160);
  const renewalExpiredGraceDays = s.integer('renewalExpiredGraceDays', 30, 0, 365);
  const iotDataEndpoint = s.string('iotDataEndpoint', HOSTNAME, 'a host name, no scheme');
  const iotCredentialsEndpoint = s.string('iotCredentialsEndpoint', HOSTNAME, 'a host name, no scheme');
  const domainName = s.string('domainName', HOSTNAME, 'a host name, no scheme');
  const certificateArn = s.string('certificateArn', ACM_CERTIFICATE_ARN);
  const logRetentionDays = s.integer('logRetentionDays', 365, 1, 3653);
  if (!RETENTION_DAYS.includes(logRetentionDays)) {
    throw new ConfigError(`setting "logRetentionDays" must be one of ${RETENTION_DAYS.join(', ')}`);
  }
  const alarmTopicArn = s.string('alarmTopicArn', SNS_TOPIC_ARN);

  if (Boolean(account) !== Boolean(region)) {
    throw new ConfigError('a stage file names both "account" and "region" (where the stage deploys), or neither');
  }
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
  if (crl && !createPrivateCa) {
    throw new ConfigError('"crl" publishes the CRL of the Private CA this stack creates: set createPrivateCa=true');
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
  if (fleetProvisioning && claimPolicyName === policyName) {
    throw new ConfigError('"claimPolicyName" and "policyName" must differ: claim certificates get only the claim policy');
  }
  if (!fleetProvisioning && claimClientIdPrefixGiven) {
    throw new ConfigError('"claimClientIdPrefix" configures the claim policy: set fleetProvisioning=true');
  }
  // cvm-device provisions with the client ID claim-<serial>: a claim certificate may connect
  // only with such an ID, so whoever extracts it cannot take over a device's client ID.
  const claimClientIdPrefix = fleetProvisioning ? (claimClientIdPrefixGiven ?? 'claim-') : undefined;
  if (Boolean(iotDataEndpoint) !== Boolean(iotCredentialsEndpoint)) {
    throw new ConfigError(
      'give both "iotDataEndpoint" and "iotCredentialsEndpoint", or neither (the function then looks both up)',
    );
  }
  if (cnPattern !== undefined) {
    try {
      new RegExp(cnPattern);
    } catch {
      throw new ConfigError(`setting "cnPattern" is not a valid regular expression: ${JSON.stringify(cnPattern)}`);
    }
  }
  if (Boolean(domainName) !== Boolean(certificateArn)) {
    throw new ConfigError('a custom domain needs both "domainName" and "certificateArn"');
  }
  if (throttleBurstLimit < throttleRateLimit) {
    throw new ConfigError('"throttleBurstLimit" must be at least "throttleRateLimit"');
  }
  // The certificate provider and the account's audit configuration exist once per account:
  // only the stage that owns them may create them (lib/stages.ts keeps that one per account).
  for (const [key, enabled] of [
    ['certificateProvider', certificateProvider],
    ['deviceDefenderAudit', deviceDefenderAudit],
  ] as const) {
    if (enabled && !ownsAccountSingletons) {
      throw new ConfigError(
        `stage "${stage}" enables "${key}", which creates a resource AWS allows once per account: ` +
          'only a stage whose file sets "ownsAccountSingletons": true (and names its "account") may enable it',
      );
    }
  }
  if (ownsAccountSingletons && !account) {
    throw new ConfigError(
      `stage "${stage}" sets "ownsAccountSingletons": its file must name the "account" it owns them in`,
    );
  }

  return {
    stage,
    account,
    region,
    terminationProtection,
    ownsAccountSingletons,
    issuerMode,
    policyName,
    roleAliasName,
    deviceRoleManagedPolicyArns,
    credentialDurationSeconds,
    pcaArn,
    createPrivateCa,
    privateCaCommonName,
    crl,
    pcaRegisteredWithIot,
    pcaTemplateArn,
    validityDays,
    cnPattern,
    architecture,
    certificateProvider,
    certificateProviderName,
    fleetProvisioning,
    provisioningTemplateName,
    claimPolicyName,
    claimClientIdPrefix,
    deviceDefenderAudit,
    throttleRateLimit,
    throttleBurstLimit,
    vendReservedConcurrency,
    providerReservedConcurrency,
    hookReservedConcurrency,
    lockoutFreeAttempts,
    lockoutMaxSeconds,
    renewalGraceHours,
    renewalExpiredGraceDays,
    iotDataEndpoint,
    iotCredentialsEndpoint,
    domainName,
    certificateArn,
    logRetentionDays,
    alarmTopicArn,
  };
}
