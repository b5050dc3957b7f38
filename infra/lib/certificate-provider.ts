import { ArnFormat, Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import type { CpuArchitecture } from './config';
import { RustLambda } from './rust-lambda';

export interface CertificateProviderProps {
  readonly manifestPath: string;
  readonly buildPackages: readonly string[];
  readonly stage: string;
  readonly providerName: string;
  readonly pcaArn: string;
  /** The end-entity template every device certificate is issued with; the only one IAM allows. */
  readonly pcaTemplateArn: string;
  /** The CA's signing algorithm when known at deploy time: the function then skips DescribeCertificateAuthority. */
  readonly signingAlgorithm?: string;
  readonly validityDays: number;
  readonly cnPattern?: string;
  readonly architecture: CpuArchitecture;
  readonly reservedConcurrency?: number;
  readonly logRetention: logs.RetentionDays;
}

/**
 * Self-managed certificate signing for AWS IoT fleet provisioning: AWS IoT invokes the
 * certificate-provider function for every CreateCertificateFromCsr of the fleet-provisioning
 * MQTT API in the account (not for the CreateCertificateFromCsr control-plane call the vend
 * function makes), and the function signs the CSR with AWS Private CA. AWS allows one
 * certificate provider per account.
 */
export class CertificateProvider extends Construct {
  readonly lambda: RustLambda;
  readonly provider: iot.CfnCertificateProvider;
  readonly providerArn: string;

  constructor(scope: Construct, id: string, props: CertificateProviderProps) {
    super(scope, id);
    const stack = Stack.of(this);

    const environment: Record<string, string> = {
      CVM_PCA_ARN: props.pcaArn,
      CVM_PCA_TEMPLATE_ARN: props.pcaTemplateArn,
      CVM_VALIDITY_DAYS: String(props.validityDays),
    };
    if (props.signingAlgorithm) environment.CVM_SIGNING_ALGORITHM = props.signingAlgorithm;
    if (props.cnPattern) environment.CVM_CN_PATTERN = props.cnPattern;

    this.lambda = new RustLambda(this, 'Provider', {
      manifestPath: props.manifestPath,
      buildPackages: props.buildPackages,
      stage: props.stage,
      binaryName: 'cert-provider',
      description: 'Signs fleet-provisioning CSRs for AWS IoT with AWS Private CA',
      architecture: props.architecture,
      memorySize: 256,
      // AWS IoT waits 5 s for a certificate provider's answer; the function gives up on its
      // own at about 4.5 s, so the timeout only catches a hung runtime.
      timeout: Duration.seconds(5),
      reservedConcurrency: props.reservedConcurrency,
      environment,
      logRetention: props.logRetention,
    });

    // IssueCertificate only with the configured end-entity template: the role cannot issue a
    // CA certificate even if the function were made to ask for one.
    this.lambda.function.addToRolePolicy(issueWithTemplate(props.pcaArn, props.pcaTemplateArn));
    // GetCertificate polls for the issued certificate; DescribeCertificateAuthority once at
    // start-up tells the CA's key type, or, when the signing algorithm is given, opens the
    // CA's connection during init (CVM_WARM_UP).
    this.lambda.function.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'ReadIssuedCertificates',
        actions: ['acm-pca:DescribeCertificateAuthority', 'acm-pca:GetCertificate'],
        resources: [props.pcaArn],
      }),
    );

    this.providerArn = stack.formatArn({
      service: 'iot',
      resource: 'certificateprovider',
      resourceName: props.providerName,
      arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
    });

    // Only AWS IoT, and only as this account's certificate provider, may invoke the
    // function (confused-deputy protection: SourceArn and SourceAccount).
    const permission = new lambda.CfnPermission(this, 'InvokeByIot', {
      action: 'lambda:InvokeFunction',
      functionName: this.lambda.function.functionArn,
      principal: 'iot.amazonaws.com',
      sourceArn: this.providerArn,
      sourceAccount: stack.account,
    });

    this.provider = new iot.CfnCertificateProvider(this, 'CertificateProvider', {
      certificateProviderName: props.providerName,
      lambdaFunctionArn: this.lambda.function.functionArn,
      accountDefaultForOperations: ['CreateCertificateFromCsr'],
    });
    // AWS IoT must be allowed to invoke the function before it routes CSRs to it.
    this.provider.node.addDependency(permission);
  }
}

/**
 * acm-pca:IssueCertificate on one CA, allowed only with one certificate template
 * (condition key acm-pca:TemplateArn). A request without a template ARN would get AWS Private
 * CA's default template and is denied too: the functions always name the template.
 */
export function issueWithTemplate(pcaArn: string, templateArn: string): iam.PolicyStatement {
  return new iam.PolicyStatement({
    sid: 'IssueWithEndEntityTemplate',
    actions: ['acm-pca:IssueCertificate'],
    resources: [pcaArn],
    conditions: { StringEquals: { 'acm-pca:TemplateArn': templateArn } },
  });
}
