import * as fs from 'node:fs';
import * as path from 'node:path';
import { ArnFormat, Aws, CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { CertificateProvider, issueWithTemplate } from './certificate-provider';
import { type CvmConfig, DEFAULT_PCA_TEMPLATE } from './config';
import { CrlDistribution } from './crl';
import { CertificateExpiryAudit } from './device-defender';
import { DeviceIdentity } from './device-identity';
import { FleetProvisioning } from './fleet-provisioning';
import { Monitoring } from './monitoring';
import { acknowledgeFindings } from './nag';
import { HOOK_MANIFEST, lambdaPackages, PROVIDER_MANIFEST, repoRoot, VEND_MANIFEST } from './paths';
import { PrivateCa } from './private-ca';
import { RustLambda } from './rust-lambda';
import { VendingApi } from './vending-api';

export interface CvmStackProps extends StackProps {
  readonly config: CvmConfig;
  /** Cargo.toml of the vend crate; defaults to functions/vend/Cargo.toml of this repository. */
  readonly vendManifestPath?: string;
  /** Cargo.toml of the certificate-provider crate; defaults to functions/cert-provider/Cargo.toml. */
  readonly providerManifestPath?: string;
  /** Cargo.toml of the pre-provisioning hook crate; defaults to functions/provisioning-hook/Cargo.toml. */
  readonly hookManifestPath?: string;
}

/**
 * The Certificate Vending Machine: the device table, the vending API and function, the
 * AWS IoT policy and role alias devices receive, optionally an AWS Private CA (with its CRL),
 * the fleet-provisioning certificate provider, fleet provisioning by claim and the Device
 * Defender expiry audit, and the operations view.
 */
export class CvmStack extends Stack {
  readonly table: dynamodb.Table;
  readonly vend: RustLambda;
  readonly api: VendingApi;
  readonly identity: DeviceIdentity;
  readonly provider?: CertificateProvider;
  readonly fleet?: FleetProvisioning;
  readonly privateCa?: PrivateCa;
  readonly crl?: CrlDistribution;
  readonly audit?: CertificateExpiryAudit;
  readonly monitoring: Monitoring;
  /** The Private CA template device certificates are issued with, when a Private CA signs. */
  readonly pcaTemplateArn?: string;

  constructor(scope: Construct, id: string, props: CvmStackProps) {
    super(scope, id, {
      description: `Certificate Vending Machine for AWS IoT (${props.config.stage})`,
      terminationProtection: props.config.terminationProtection,
      ...props,
    });
    const config = props.config;
    const root = repoRoot();
    const vendManifestPath = props.vendManifestPath ?? path.join(root, VEND_MANIFEST);
    const providerManifestPath = props.providerManifestPath ?? path.join(root, PROVIDER_MANIFEST);
    const hookManifestPath = props.hookManifestPath ?? path.join(root, HOOK_MANIFEST);
    const buildPackages = lambdaPackages(root);
    const logRetention = config.logRetentionDays as logs.RetentionDays;
    const iotArn = (resource: string, resourceName: string) =>
      this.formatArn({ service: 'iot', resource, resourceName, arnFormat: ArnFormat.SLASH_RESOURCE_NAME });

    // One item per enrolled serial: token hash, failed-attempt counter, claim, and the
    // issued certificate. Items are never expired by DynamoDB (no TTL): a device record
    // lives as long as the device.
    //
    // Encryption with the AWS managed key (aws/dynamodb) rather than a customer managed
    // key: the table holds token hashes and public certificates, no key material, so the
    // extra control of a customer managed key (own key policy, cross-account grants,
    // revoking access by disabling the key) does not pay for its cost and the outage risk
    // of a key policy mistake. Unlike the AWS owned default, use of this key is visible
    // in CloudTrail.
    this.table = new dynamodb.Table(this, 'DeviceTable', {
      partitionKey: { name: 'serial', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: true,
      // Enrollment records cannot be recreated (the factory holds the only copy of the
      // tokens): deleting the stack leaves the table in place.
      removalPolicy: RemovalPolicy.RETAIN,
    });

    let pcaArn = config.pcaArn;
    let signingAlgorithm: string | undefined;
    if (config.createPrivateCa) {
      if (config.crl) this.crl = new CrlDistribution(this, 'Crl');
      this.privateCa = new PrivateCa(this, 'PrivateCa', { commonName: config.privateCaCommonName, crl: this.crl });
      pcaArn = this.privateCa.arn;
      // Known from the CA's key: the functions then need no DescribeCertificateAuthority.
      signingAlgorithm = this.privateCa.signingAlgorithm;
    }
    if (pcaArn) {
      this.pcaTemplateArn =
        config.pcaTemplateArn ?? `arn:${Aws.PARTITION}:acm-pca:::template/${DEFAULT_PCA_TEMPLATE}`;
    }

    this.identity = new DeviceIdentity(this, 'DeviceIdentity', {
      policyName: config.policyName,
      roleAliasName: config.roleAliasName,
      credentialDurationSeconds: config.credentialDurationSeconds,
      deviceRoleManagedPolicyArns: config.deviceRoleManagedPolicyArns,
    });

    const vendEnvironment: Record<string, string> = {
      CVM_TABLE_NAME: this.table.tableName,
      CVM_ISSUER: config.issuerMode,
      CVM_DEFAULT_POLICY_NAME: config.policyName,
      CVM_LOCKOUT_FREE_ATTEMPTS: String(config.lockoutFreeAttempts),
      CVM_LOCKOUT_MAX_SECONDS: String(config.lockoutMaxSeconds),
      CVM_RENEWAL_GRACE_HOURS: String(config.renewalGraceHours),
      CVM_RENEWAL_EXPIRED_GRACE_DAYS: String(config.renewalExpiredGraceDays),
      CVM_ROLE_ALIAS: config.roleAliasName,
    };
    if (config.issuerMode === 'acm-pca') {
      vendEnvironment.CVM_PCA_ARN = pcaArn as string;
      vendEnvironment.CVM_PCA_TEMPLATE_ARN = this.pcaTemplateArn as string;
      vendEnvironment.CVM_VALIDITY_DAYS = String(config.validityDays);
      if (signingAlgorithm) vendEnvironment.CVM_SIGNING_ALGORITHM = signingAlgorithm;
      if (config.pcaRegisteredWithIot) vendEnvironment.CVM_PCA_REGISTERED_WITH_IOT = 'true';
    }
    if (config.iotDataEndpoint && config.iotCredentialsEndpoint) {
      vendEnvironment.CVM_IOT_DATA_ENDPOINT = config.iotDataEndpoint;
      vendEnvironment.CVM_IOT_CREDENTIALS_ENDPOINT = config.iotCredentialsEndpoint;
    }

    this.vend = new RustLambda(this, 'Vend', {
      manifestPath: vendManifestPath,
      buildPackages,
      stage: config.stage,
      binaryName: 'vend',
      description: 'Vends and renews AWS IoT device certificates: POST /v1/certificates, /v1/renewals, /v1/renewals/confirm',
      architecture: config.architecture,
      memorySize: 256,
      // A vend is five sequential AWS round trips (claim the record, issue the certificate ‖
      // create the thing, record it pending ‖ attach policy and certificate, activate it,
      // record the result), each normally well under a second but up to a few seconds when AWS IoT
      // is slow or the SDK retries a throttled call. 10 s leaves room for that and for the
      // rollback of a half-done vend, and stays below API Gateway's 30 s integration timeout.
      timeout: Duration.seconds(10),
      reservedConcurrency: config.vendReservedConcurrency,
      environment: vendEnvironment,
      logRetention,
    });
    const vendFn = this.vend.function;

    // Exactly the calls the vend function makes, each on the narrowest resource AWS allows.
    // Resource types per the Service Authorization Reference (Actions, resources, and
    // condition keys for AWS IoT / AWS Private Certificate Authority / Amazon DynamoDB):
    // https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html
    vendFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'ReadWriteDeviceRecords',
        actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
        resources: [this.table.tableArn],
      }),
    );
    if (config.issuerMode === 'iot') {
      // iot:CreateCertificateFromCsr has no resource type in the reference: it can only be
      // granted on "*" (the certificate does not exist before the call).
      vendFn.addToRolePolicy(
        new iam.PolicyStatement({
          sid: 'IssueWithAwsIot',
          actions: ['iot:CreateCertificateFromCsr'],
          resources: ['*'],
        }),
      );
    } else {
      // IssueCertificate per vend, only with the end-entity template; GetCertificate per vend;
      // RevokeCertificate to undo a vend that failed after issuance and for a renewal's old or
      // abandoned certificate; DescribeCertificateAuthority once at start-up (the signing
      // algorithm follows the CA's key type, unless configured; otherwise the call that opens
      // the CA's connection during init, CVM_WARM_UP);
      // GetCertificateAuthorityCertificate once at start-up when certificates are registered
      // with the CA.
      vendFn.addToRolePolicy(issueWithTemplate(pcaArn as string, this.pcaTemplateArn as string));
      vendFn.addToRolePolicy(
        new iam.PolicyStatement({
          sid: 'UsePrivateCa',
          actions: [
            'acm-pca:GetCertificate',
            'acm-pca:RevokeCertificate',
            'acm-pca:DescribeCertificateAuthority',
            ...(config.pcaRegisteredWithIot ? ['acm-pca:GetCertificateAuthorityCertificate'] : []),
          ],
          resources: [pcaArn as string],
        }),
      );
      // Neither iot:RegisterCertificateWithoutCA nor iot:RegisterCertificate has a resource
      // type in the reference: "*" is the only resource they can be granted on.
      vendFn.addToRolePolicy(
        new iam.PolicyStatement({
          sid: 'RegisterPrivateCaCertificate',
          actions: [config.pcaRegisteredWithIot ? 'iot:RegisterCertificate' : 'iot:RegisterCertificateWithoutCA'],
          resources: ['*'],
        }),
      );
    }
    // The reference authorizes all of these against the certificate (resource type "cert"):
    // AttachPolicy/DetachPolicy/ListAttachedPolicies against their target, not the policy, and
    // AttachThingPrincipal/DetachThingPrincipal against the principal, not the thing.
    // IAM therefore cannot restrict which AWS IoT policy gets attached: the function attaches
    // the deployment's policy or the one the enrollment record (written by operators) names,
    // never one the request names. A confirmed renewal retires the old certificate: revoked,
    // then detached from the thing and from every policy attached to it (ListAttachedPolicies),
    // in either issuer mode. In acm-pca mode, revoking at the CA reads the certificate
    // (DescribeCertificate) for its serial, when undoing a vend or retiring a certificate.
    vendFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'ManageVendedCertificates',
        actions: [
          'iot:UpdateCertificate',
          'iot:DeleteCertificate',
          'iot:AttachPolicy',
          'iot:DetachPolicy',
          'iot:ListAttachedPolicies',
          'iot:AttachThingPrincipal',
          'iot:DetachThingPrincipal',
          ...(config.issuerMode === 'acm-pca' ? ['iot:DescribeCertificate'] : []),
        ],
        resources: [iotArn('cert', '*')],
      }),
    );
    vendFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'CreateThings',
        actions: ['iot:CreateThing'],
        resources: [iotArn('thing', '*')],
      }),
    );
    // Once per execution environment, at start-up: the endpoints when they are not given in
    // the environment, otherwise the call that opens AWS IoT's connection during init
    // (CVM_WARM_UP). Read-only; no resource type in the reference: "*" only.
    vendFn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'DiscoverIotEndpoints',
        actions: ['iot:DescribeEndpoint'],
        resources: ['*'],
      }),
    );
    vendFn.node.addDependency(this.identity.policy);

    if (config.certificateProvider) {
      this.provider = new CertificateProvider(this, 'CertificateProvider', {
        manifestPath: providerManifestPath,
        buildPackages,
        stage: config.stage,
        providerName: config.certificateProviderName,
        pcaArn: pcaArn as string,
        pcaTemplateArn: this.pcaTemplateArn as string,
        signingAlgorithm,
        validityDays: config.validityDays,
        cnPattern: config.cnPattern,
        architecture: config.architecture,
        reservedConcurrency: config.providerReservedConcurrency,
        logRetention,
      });
    }

    if (config.fleetProvisioning) {
      if (!fs.existsSync(hookManifestPath)) {
        throw new Error(
          `fleetProvisioning=true deploys the pre-provisioning hook, but its crate is missing (${hookManifestPath})`,
        );
      }
      this.fleet = new FleetProvisioning(this, 'FleetProvisioning', {
        hookManifestPath,
        buildPackages,
        stage: config.stage,
        templateName: config.provisioningTemplateName,
        claimPolicyName: config.claimPolicyName,
        claimClientIdPrefix: config.claimClientIdPrefix,
        table: this.table,
        defaultPolicyName: config.policyName,
        lockoutFreeAttempts: config.lockoutFreeAttempts,
        lockoutMaxSeconds: config.lockoutMaxSeconds,
        architecture: config.architecture,
        reservedConcurrency: config.hookReservedConcurrency,
        logRetention,
      });
      // The template attaches the device policy by name: it must exist first.
      this.fleet.template.node.addDependency(this.identity.policy);
    }

    if (config.deviceDefenderAudit) {
      this.audit = new CertificateExpiryAudit(this, 'CertificateExpiryAudit', {
        stage: config.stage,
        notificationTopicArn: config.alarmTopicArn,
      });
    }

    if (this.privateCa) {
      // Nothing signs with the CA before it is active.
      vendFn.node.addDependency(this.privateCa.activation);
      this.provider?.lambda.function.node.addDependency(this.privateCa.activation);
    }

    this.api = new VendingApi(this, 'Api', {
      vendFunction: vendFn,
      throttleRateLimit: config.throttleRateLimit,
      throttleBurstLimit: config.throttleBurstLimit,
      logRetention,
      domainName: config.domainName,
      certificateArn: config.certificateArn,
    });

    this.monitoring = new Monitoring(this, 'Monitoring', {
      stage: config.stage,
      vendFunction: vendFn,
      apiStage: this.api.stage,
      providerFunction: this.provider?.lambda.function,
      hookFunction: this.fleet?.hook.function,
      alarmTopicArn: config.alarmTopicArn,
    });

    acknowledgeFindings(this, config);

    new CfnOutput(this, 'ApiUrl', {
      description: 'Base URL of the vending API; devices POST to <url>v1/certificates, <url>v1/renewals, <url>v1/renewals/confirm',
      value: this.api.url,
    });
    if (this.api.domain) {
      new CfnOutput(this, 'ApiDomainTarget', {
        description: `DNS target (CNAME or alias) for ${config.domainName}`,
        value: this.api.domain.regionalDomainName,
      });
    }
    new CfnOutput(this, 'TableName', {
      description: 'Device table; set CVM_TABLE_NAME to this for cvm-admin',
      value: this.table.tableName,
    });
    new CfnOutput(this, 'IotDataEndpoint', {
      description: 'AWS IoT data endpoint handed to devices',
      value:
        config.iotDataEndpoint ??
        'not configured: the vend function calls iot:DescribeEndpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)',
    });
    new CfnOutput(this, 'IotCredentialsEndpoint', {
      description: 'AWS IoT credentials-provider endpoint handed to devices',
      value:
        config.iotCredentialsEndpoint ??
        'not configured: the vend function calls iot:DescribeEndpoint (aws iot describe-endpoint --endpoint-type iot:CredentialProvider)',
    });
    new CfnOutput(this, 'DevicePolicyName', { value: config.policyName });
    new CfnOutput(this, 'RoleAliasName', { value: config.roleAliasName });
    new CfnOutput(this, 'VendFunctionName', { value: vendFn.functionName });
    if (pcaArn) {
      new CfnOutput(this, 'PrivateCaArn', { value: pcaArn });
    }
    if (this.crl) {
      new CfnOutput(this, 'CrlDistributionDomain', {
        description: 'Host of the CRL distribution point certificates name: http://<domain>/crl/<ca-id>.crl',
        value: this.crl.domainName,
      });
    }
    if (this.provider) {
      new CfnOutput(this, 'CertificateProviderName', { value: config.certificateProviderName });
    }
    if (this.fleet) {
      new CfnOutput(this, 'ProvisioningTemplateName', {
        description: 'Fleet-provisioning template devices name in $aws/provisioning-templates/<name>/provision/json',
        value: config.provisioningTemplateName,
      });
      new CfnOutput(this, 'ClaimPolicyName', {
        description: 'AWS IoT policy to attach to claim certificates (cvm-admin claim certificates)',
        value: config.claimPolicyName,
      });
    }
    new CfnOutput(this, 'DashboardUrl', {
      description: 'CloudWatch dashboard of this deployment',
      value:
        `https://${Aws.REGION}.console.aws.amazon.com/cloudwatch/home?region=${Aws.REGION}` +
        `#dashboards:name=${this.monitoring.dashboard.dashboardName}`,
    });
  }
}
