import { RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as acmpca from 'aws-cdk-lib/aws-acmpca';
import { Construct } from 'constructs';

export interface PrivateCaProps {
  readonly commonName: string;
}

const SIGNING_ALGORITHM = 'SHA256WITHECDSA';

/**
 * A root AWS Private CA for device certificates: an EC P-256 key, a self-signed CA
 * certificate valid for ten years, and its activation.
 *
 * Everything is retained when the stack is deleted. A CA costs money every month while
 * it exists, but deleting it by accident would make every device certificate it signed
 * unverifiable by anyone who trusts it; the deployment guide shows how to disable and
 * delete it deliberately.
 *
 * No CRL or OCSP is configured: AWS IoT decides whether a device certificate is usable by
 * its status in the AWS IoT registry (revocation deactivates it there), not by CRL or OCSP.
 */
export class PrivateCa extends Construct {
  readonly arn: string;
  /** The activation; whatever signs with the CA should depend on it. */
  readonly activation: acmpca.CfnCertificateAuthorityActivation;

  constructor(scope: Construct, id: string, props: PrivateCaProps) {
    super(scope, id);

    const ca = new acmpca.CfnCertificateAuthority(this, 'Authority', {
      type: 'ROOT',
      keyAlgorithm: 'EC_prime256v1',
      signingAlgorithm: SIGNING_ALGORITHM,
      subject: { commonName: props.commonName },
      // Device certificates live for months to years: GENERAL_PURPOSE, not SHORT_LIVED_CERTIFICATE.
      usageMode: 'GENERAL_PURPOSE',
    });
    ca.applyRemovalPolicy(RemovalPolicy.RETAIN);

    const certificate = new acmpca.CfnCertificate(this, 'RootCertificate', {
      certificateAuthorityArn: ca.attrArn,
      certificateSigningRequest: ca.attrCertificateSigningRequest,
      signingAlgorithm: SIGNING_ALGORITHM,
      templateArn: `arn:${Stack.of(this).partition}:acm-pca:::template/RootCACertificate/V1`,
      validity: { type: 'YEARS', value: 10 },
    });
    certificate.applyRemovalPolicy(RemovalPolicy.RETAIN);

    this.activation = new acmpca.CfnCertificateAuthorityActivation(this, 'Activation', {
      certificateAuthorityArn: ca.attrArn,
      certificate: certificate.attrCertificate,
      status: 'ACTIVE',
    });
    this.activation.applyRemovalPolicy(RemovalPolicy.RETAIN);

    this.arn = ca.attrArn;
  }
}
