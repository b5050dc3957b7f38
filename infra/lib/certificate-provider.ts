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
  readonly providerName: string;
  readonly pcaArn: string;
  readonly pcaTemplateArn?: string;
  readonly validityDays: number;
  readonly cnPattern?: string;
  readonly architecture: CpuArchitecture;
  readonly reservedConcurrency?: number;
  readonly logRetention: logs.RetentionDays;
}

/**
 * Self-managed certificate signing for AWS IoT fleet provisioning: AWS IoT invokes the
 * certificate-provider function for every CreateCertificateFromCsr of the account, and
 * the function signs the CSR with AWS Private CA.
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
      CVM_VALIDITY_DAYS: String(props.validityDays),
    };
    if (props.pcaTemplateArn) environment.CVM_PCA_TEMPLATE_ARN = props.pcaTemplateArn;
    if (props.cnPattern) environment.CVM_CN_PATTERN = props.cnPattern;

    this.lambda = new RustLambda(this, 'Provider', {
      manifestPath: props.manifestPath,
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

    this.lambda.function.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'SignWithPrivateCa',
        actions: ['acm-pca:IssueCertificate', 'acm-pca:GetCertificate', 'acm-pca:DescribeCertificateAuthority'],
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
