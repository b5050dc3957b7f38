import { RemovalPolicy } from 'aws-cdk-lib';
import { AccessLogFormat } from 'aws-cdk-lib/aws-apigateway';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as acm from 'aws-cdk-lib/aws-certificatemanager';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export interface VendingApiProps {
  readonly vendFunction: lambda.IFunction;
  readonly throttleRateLimit: number;
  readonly throttleBurstLimit: number;
  readonly logRetention: logs.RetentionDays;
  readonly domainName?: string;
  readonly certificateArn?: string;
}

/** The routes, all served by the vend function: first vend, then renewal and its confirmation. */
export const VEND_ROUTE_PATH = '/v1/certificates';
export const RENEWAL_ROUTE_PATH = '/v1/renewals';
export const RENEWAL_CONFIRM_ROUTE_PATH = '/v1/renewals/confirm';
export const ROUTE_PATHS = [VEND_ROUTE_PATH, RENEWAL_ROUTE_PATH, RENEWAL_CONFIRM_ROUTE_PATH] as const;

/**
 * Fields of one access-log line. Deliberately absent: the request body (it carries the
 * enrollment token and the CSR), the query string and headers other than the user agent.
 * The path is not logged either; the route key names the route.
 */
export const ACCESS_LOG_FIELDS: Record<string, string> = {
  requestId: '$context.requestId',
  ip: '$context.identity.sourceIp',
  requestTime: '$context.requestTime',
  routeKey: '$context.routeKey',
  status: '$context.status',
  protocol: '$context.protocol',
  responseLength: '$context.responseLength',
  responseLatency: '$context.responseLatency',
  integrationLatency: '$context.integrationLatency',
  integrationStatus: '$context.integrationStatus',
  integrationError: '$context.integrationErrorMessage',
  error: '$context.error.message',
  userAgent: '$context.identity.userAgent',
};

/**
 * The public vending endpoint: `POST /v1/certificates` (first vend, with the one-time
 * token), `POST /v1/renewals` and `POST /v1/renewals/confirm` (renewal, signed by the
 * device's current and then its new key), and nothing else.
 *
 * An HTTP API rather than a REST API. What a REST API would add does not apply here:
 * usage plans meter API keys, and a device has no key (nor any identity) before it is
 * enrolled; the one-time token in the body is its credential, checked by the function,
 * which locks a serial after repeated wrong tokens. AWS WAF attaches only to REST APIs;
 * where a WAF is required, put CloudFront with WAF in front of this API. In return an
 * HTTP API is cheaper and adds less latency, speaks payload format 2.0, and throttles
 * per stage, which together with the vend function's reserved concurrency keeps the
 * load on AWS IoT below its control-plane quotas.
 */
export class VendingApi extends Construct {
  readonly api: apigwv2.HttpApi;
  readonly stage: apigwv2.HttpStage;
  /** The routes, in the order of ROUTE_PATHS. */
  readonly routes: apigwv2.HttpRoute[];
  readonly accessLogGroup: logs.LogGroup;
  readonly domain?: apigwv2.DomainName;
  /** The URL devices call, ending in a slash. */
  readonly url: string;

  constructor(scope: Construct, id: string, props: VendingApiProps) {
    super(scope, id);

    if (props.domainName && props.certificateArn) {
      this.domain = new apigwv2.DomainName(this, 'DomainName', {
        domainName: props.domainName,
        certificate: acm.Certificate.fromCertificateArn(this, 'DomainCertificate', props.certificateArn),
        securityPolicy: apigwv2.SecurityPolicy.TLS_1_2,
      });
    }

    this.api = new apigwv2.HttpApi(this, 'HttpApi', {
      description: 'Certificate Vending Machine: devices exchange a CSR and a one-time token for a certificate',
      createDefaultStage: false,
      // With a custom domain, devices are configured with that name; the execute-api
      // hostname would be a second way in that bypasses the domain's TLS policy.
      disableExecuteApiEndpoint: this.domain !== undefined,
    });

    // One integration for all routes: the function routes by path itself.
    const integration = new HttpLambdaIntegration('Vend', props.vendFunction, {
      payloadFormatVersion: apigwv2.PayloadFormatVersion.VERSION_2_0,
    });
    this.routes = ROUTE_PATHS.flatMap((path) =>
      this.api.addRoutes({ path, methods: [apigwv2.HttpMethod.POST], integration }),
    );

    this.accessLogGroup = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.stage = new apigwv2.HttpStage(this, 'DefaultStage', {
      httpApi: this.api,
      stageName: '$default',
      autoDeploy: true,
      throttle: { rateLimit: props.throttleRateLimit, burstLimit: props.throttleBurstLimit },
      accessLogSettings: {
        destination: new apigwv2.LogGroupLogDestination(this.accessLogGroup),
        format: AccessLogFormat.custom(JSON.stringify(ACCESS_LOG_FIELDS)),
      },
      domainMapping: this.domain ? { domainName: this.domain } : undefined,
    });

    this.url = this.domain ? `https://${props.domainName}/` : this.stage.url;
  }
}
