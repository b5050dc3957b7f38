import { ArnFormat, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudfront from 'aws-cdk-lib/aws-cloudfront';
import * as origins from 'aws-cdk-lib/aws-cloudfront-origins';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

/** Days a published CRL stays valid (its nextUpdate); AWS Private CA republishes well before. */
export const CRL_EXPIRATION_DAYS = 7;

/**
 * Where the Private CA publishes its certificate revocation list, and how relying parties get
 * it, the way AWS Private CA documents for CRLs in a private bucket:
 *
 * - a private S3 bucket (Block Public Access on, ACLs disabled) that only AWS Private CA of
 *   this account may write to: the CA writes `crl/<ca-id>.crl` with the
 *   bucket-owner-full-control ACL, the only ACL a bucket with ACLs disabled accepts;
 * - a CloudFront distribution that reads the bucket through origin access control, whose
 *   domain is the CA's CRL custom name: every certificate the CA issues names
 *   `http://<distribution domain>/crl/<ca-id>.crl` as its CRL distribution point.
 *
 * AWS IoT itself does not read CRLs (it trusts a certificate by its status in the registry,
 * which revocation sets), so the CRL serves other parties that verify device certificates.
 * CRL distribution points are plain-HTTP URIs (a CRL is signed; fetching it over TLS would
 * itself need a revocation check), and CloudFront reaches an S3 origin with the protocol the
 * viewer used: the bucket therefore does not refuse plain HTTP, and the distribution serves
 * both HTTP and HTTPS.
 */
export class CrlDistribution extends Construct {
  readonly bucket: s3.Bucket;
  readonly distribution: cloudfront.Distribution;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    const stack = Stack.of(this);

    this.bucket = new s3.Bucket(this, 'Bucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      encryption: s3.BucketEncryption.S3_MANAGED,
      // Retained with the CA it serves: relying parties keep fetching the CRL.
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // Only AWS Private CA, writing for a CA of this account and region. The CA's own ARN would
    // be the narrowest SourceArn, but the CA checks this policy when it is created, so the
    // policy cannot wait for the CA's ARN: certificate-authority/* of this account and region.
    this.bucket.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'PrivateCaWritesCrl',
        principals: [new iam.ServicePrincipal('acm-pca.amazonaws.com')],
        actions: ['s3:PutObject', 's3:PutObjectAcl', 's3:GetBucketAcl', 's3:GetBucketLocation'],
        resources: [this.bucket.bucketArn, this.bucket.arnForObjects('*')],
        conditions: {
          StringEquals: { 'aws:SourceAccount': stack.account },
          ArnLike: {
            'aws:SourceArn': stack.formatArn({
              service: 'acm-pca',
              resource: 'certificate-authority',
              resourceName: '*',
              arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
            }),
          },
        },
      }),
    );

    this.distribution = new cloudfront.Distribution(this, 'Distribution', {
      comment: 'Certificate revocation list of the device Private CA',
      defaultBehavior: {
        origin: origins.S3BucketOrigin.withOriginAccessControl(this.bucket),
        viewerProtocolPolicy: cloudfront.ViewerProtocolPolicy.ALLOW_ALL,
        allowedMethods: cloudfront.AllowedMethods.ALLOW_GET_HEAD,
        // A revocation reaches the CRL within about 30 minutes at AWS Private CA; a short
        // cache adds at most five more.
        cachePolicy: new cloudfront.CachePolicy(this, 'CachePolicy', {
          comment: 'CRL: cached for five minutes',
          minTtl: Duration.seconds(0),
          defaultTtl: Duration.minutes(5),
          maxTtl: Duration.minutes(5),
        }),
      },
      priceClass: cloudfront.PriceClass.PRICE_CLASS_100,
    });
  }

  /** The host name certificates name in their CRL distribution point. */
  get domainName(): string {
    return this.distribution.distributionDomainName;
  }
}
