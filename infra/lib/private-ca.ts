import { RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as acmpca from 'aws-cdk-lib/aws-acmpca';
import { Construct } from 'constructs';
import { CRL_EXPIRATION_DAYS, type CrlDistribution } from './crl';

export interface PrivateCaProps {
  readonly commonName: string;
  /** Publish the CA's CRL there; without it the CA publishes no CRL. */
  readonly crl?: CrlDistribution;
}

/** The created CA's signing algorithm, which follows its key (EC P-256). */
export const PRIVATE_CA_SIGNING_ALGORITHM = 'SHA256WITHECDSA';

/**
 * A root AWS Private CA for device certificates: an EC P-256 key, a self-signed CA
 * certificate valid for ten years, and its activation.
 *
 * Everything is retained when the stack is deleted. A CA costs money every month while
 * it exists, but deleting it by accident would make every device certificate it signed
 * unverifiable by anyone who trusts it; the deployment guide shows how to disable and
 * delete it deliberately.
 *
 * AWS IoT decides whether a device certificate is usable by its status in the AWS IoT
 * registry (revocation deactivates it there), not by CRL or OCSP. A CRL is published only
 * when asked for (`crl`), for other parties that verify device certificates; no OCSP.
 */
export class PrivateCa extends Construct {
  readonly arn: string;
  readonly signingAlgorithm = PRIVATE_CA_SIGNING_ALGORITHM;
  /** The activation; whatever signs with the CA should depend on it. */
  readonly activation: acmpca.CfnCertificateAuthorityActivation;

  constructor(scope: Construct, id: string, props: PrivateCaProps) {
    super(scope, id);

    const ca = new acmpca.CfnCertificateAuthority(this, 'Authority', {
      type: 'ROOT',
      keyAlgorithm: 'EC_prime256v1',
      signingAlgorithm: PRIVATE_CA_SIGNING_ALGORITHM,
      subject: { commonName: props.commonName },
      // Device certificates live for months to years: GENERAL_PURPOSE, not SHORT_LIVED_CERTIFICATE.
      usageMode: 'GENERAL_PURPOSE',
      revocationConfiguration: props.crl
        ? {
            crlConfiguration: {
              enabled: true,
              expirationInDays: CRL_EXPIRATION_DAYS,
              s3BucketName: props.crl.bucket.bucketName,
              // The bucket has ACLs disabled (Block Public Access on): this is the one ACL it accepts.
              s3ObjectAcl: 'BUCKET_OWNER_FULL_CONTROL',
              // Certificates name http://<distribution domain>/crl/<ca-id>.crl as their CRL
              // distribution point, served by CloudFront from the private bucket.
              customCname: props.crl.domainName,
              crlDistributionPointExtensionConfiguration: { omitExtension: false },
            },
          }
        : undefined,
    });
    ca.applyRemovalPolicy(RemovalPolicy.RETAIN);
    if (props.crl?.bucket.policy) {
      // AWS Private CA checks that it may write to the bucket when the CA is created.
      ca.node.addDependency(props.crl.bucket.policy);
    }

    const certificate = new acmpca.CfnCertificate(this, 'RootCertificate', {
      certificateAuthorityArn: ca.attrArn,
      certificateSigningRequest: ca.attrCertificateSigningRequest,
      signingAlgorithm: PRIVATE_CA_SIGNING_ALGORITHM,
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
