import { Aws, Duration } from 'aws-cdk-lib';
import type * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import {
  METRIC_NAMESPACE,
  METRICS,
  OUTCOME_DIMENSION,
  PROVIDER_DEADLINE_MS,
  PROVIDER_LATENCY_ALARM_MS,
  VEND_OUTCOMES,
} from './metrics';

export interface MonitoringProps {
  readonly stage: string;
  readonly vendFunction: lambda.IFunction;
  readonly apiStage: apigwv2.IHttpStage;
  /** Present when the certificate provider is deployed. */
  readonly providerFunction?: lambda.IFunction;
  readonly alarmTopicArn?: string;
}

/** Failed vends plus Lambda errors, as a share of invocations, above which the error-rate alarm fires. */
export const VEND_ERROR_RATE_PERCENT = 5;

const FIVE_MINUTES = Duration.minutes(5);

function cvmMetric(metricName: string, statistic: string, dimensionsMap?: Record<string, string>, period = FIVE_MINUTES) {
  return new cloudwatch.Metric({ namespace: METRIC_NAMESPACE, metricName, statistic, dimensionsMap, period });
}

/**
 * The operations view: a dashboard of the functions' own metrics (published as CloudWatch
 * Embedded Metric Format in their logs) next to the API Gateway and Lambda metrics, and
 * alarms on what needs a person: failing vends, a certificate provider nearing AWS IoT's
 * 5-second deadline, sustained throttling by AWS, and Lambda throttling.
 */
export class Monitoring extends Construct {
  readonly dashboard: cloudwatch.Dashboard;
  readonly alarms: cloudwatch.Alarm[] = [];

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);
    const { vendFunction, providerFunction, apiStage } = props;

    const vendsByOutcome = VEND_OUTCOMES.map((outcome) =>
      cvmMetric(METRICS.vends, 'Sum', { [OUTCOME_DIMENSION]: outcome }).with({ label: outcome }),
    );
    const failedVends = vendsByOutcome[VEND_OUTCOMES.indexOf('failed')];
    const upstreamThrottles = cvmMetric(METRICS.upstreamThrottles, 'Sum');
    const lockouts = cvmMetric(METRICS.lockouts, 'Sum');

    // Vend error rate: vends the function answered with a server error plus invocations
    // that failed outright (crash, timeout), per invocation.
    const vendErrorRate = new cloudwatch.MathExpression({
      label: 'Vend error rate (%)',
      expression: 'IF(FILL(invocations, 0) > 0, 100 * (FILL(failed, 0) + FILL(errors, 0)) / FILL(invocations, 0), 0)',
      usingMetrics: {
        failed: failedVends,
        errors: vendFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum' }),
        invocations: vendFunction.metricInvocations({ period: FIVE_MINUTES, statistic: 'Sum' }),
      },
      period: FIVE_MINUTES,
    });

    this.addAlarm('VendErrorRate', {
      alarmDescription:
        `More than ${VEND_ERROR_RATE_PERCENT}% of vend invocations failed (Vends{Outcome=failed} or Lambda Errors) ` +
        'in 2 of the last 3 five-minute periods. Devices retry with the same token; look at the vend log group.',
      metric: vendErrorRate,
      threshold: VEND_ERROR_RATE_PERCENT,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      datapointsToAlarm: 2,
    });

    this.addAlarm('UpstreamThrottlesSustained', {
      alarmDescription:
        'AWS has throttled the vend function (UpstreamThrottles > 0) for 15 minutes in a row: ' +
        'lower the API throttle or the reserved concurrency, or ask for higher AWS IoT quotas.',
      metric: upstreamThrottles,
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      datapointsToAlarm: 3,
    });

    this.addAlarm('VendLambdaThrottles', {
      alarmDescription:
        'Lambda throttled the vend function (its reserved concurrency is exhausted) in 2 of the last 3 five-minute periods.',
      metric: vendFunction.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum' }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      datapointsToAlarm: 2,
    });

    const apiClientErrors = apiStage.metricClientError({ period: FIVE_MINUTES, statistic: 'Sum', label: 'API 4xx' });
    const apiServerErrors = apiStage.metricServerError({ period: FIVE_MINUTES, statistic: 'Sum', label: 'API 5xx' });
    const throttleAndErrorMetrics: cloudwatch.IMetric[] = [
      upstreamThrottles.with({ label: 'Throttled by AWS (UpstreamThrottles)' }),
      apiClientErrors,
      apiServerErrors,
      vendFunction.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Vend Lambda throttles' }),
      vendFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Vend Lambda errors' }),
    ];
    if (providerFunction) {
      throttleAndErrorMetrics.push(
        providerFunction.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Provider Lambda throttles' }),
      );
    }

    const widgets: cloudwatch.IWidget[][] = [
      [
        new cloudwatch.GraphWidget({
          title: 'Vends by outcome',
          left: vendsByOutcome,
          stacked: true,
          width: 12,
        }),
        new cloudwatch.GraphWidget({
          title: 'Vend latency',
          left: [
            cvmMetric(METRICS.vendLatency, 'p50').with({ label: 'p50' }),
            cvmMetric(METRICS.vendLatency, 'p99').with({ label: 'p99' }),
          ],
          leftYAxis: { label: 'ms', showUnits: false, min: 0 },
          width: 12,
        }),
      ],
      [
        new cloudwatch.GraphWidget({
          title: 'Throttles and errors',
          left: throttleAndErrorMetrics,
          width: 12,
        }),
        new cloudwatch.GraphWidget({
          title: 'Lockouts',
          left: [lockouts.with({ label: 'Serials locked' })],
          width: 12,
        }),
      ],
    ];

    if (providerFunction) {
      const providerLatencyP99 = cvmMetric(METRICS.providerLatency, 'p99', undefined, Duration.minutes(1));
      const providerErrors = cvmMetric(METRICS.providerErrors, 'Sum');

      this.addAlarm('ProviderLatencyP99', {
        alarmDescription:
          `Certificate provider p99 latency above ${PROVIDER_LATENCY_ALARM_MS} ms in 3 of the last 5 minutes; ` +
          `AWS IoT abandons a provider call at ${PROVIDER_DEADLINE_MS} ms and fleet provisioning fails.`,
        metric: providerLatencyP99,
        threshold: PROVIDER_LATENCY_ALARM_MS,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 5,
        datapointsToAlarm: 3,
      });

      this.addAlarm('ProviderErrors', {
        alarmDescription:
          'The certificate provider failed (ProviderErrors or Lambda Errors) in 2 of the last 3 five-minute periods: ' +
          'fleet provisioning CreateCertificateFromCsr calls fail.',
        metric: new cloudwatch.MathExpression({
          label: 'Provider failures',
          expression: 'FILL(providerErrors, 0) + FILL(lambdaErrors, 0)',
          usingMetrics: {
            providerErrors,
            lambdaErrors: providerFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum' }),
          },
          period: FIVE_MINUTES,
        }),
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        datapointsToAlarm: 2,
      });

      this.addAlarm('ProviderLambdaThrottles', {
        alarmDescription:
          'Lambda throttled the certificate provider (reserved concurrency exhausted) in 2 of the last 3 five-minute periods.',
        metric: providerFunction.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum' }),
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        datapointsToAlarm: 2,
      });

      widgets.push([
        new cloudwatch.GraphWidget({
          title: 'Certificate provider latency p99',
          left: [providerLatencyP99.with({ label: 'p99' })],
          leftYAxis: { label: 'ms', showUnits: false, min: 0 },
          leftAnnotations: [
            { value: PROVIDER_DEADLINE_MS, label: 'AWS IoT deadline', color: cloudwatch.Color.RED },
            { value: PROVIDER_LATENCY_ALARM_MS, label: 'Alarm', color: cloudwatch.Color.ORANGE },
          ],
          width: 12,
        }),
        new cloudwatch.GraphWidget({
          title: 'Certificate provider errors',
          left: [
            providerErrors.with({ label: 'ProviderErrors' }),
            providerFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Provider Lambda errors' }),
          ],
          width: 12,
        }),
      ]);
    }

    widgets.push([new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms, width: 24 })]);

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: `cvm-${props.stage}-${Aws.REGION}`,
      widgets,
    });

    if (props.alarmTopicArn) {
      const topic = sns.Topic.fromTopicArn(this, 'AlarmTopic', props.alarmTopicArn);
      for (const alarm of this.alarms) {
        alarm.addAlarmAction(new actions.SnsAction(topic));
        alarm.addOkAction(new actions.SnsAction(topic));
      }
    }
  }

  private addAlarm(id: string, props: Omit<cloudwatch.AlarmProps, 'treatMissingData'>): cloudwatch.Alarm {
    const alarm = new cloudwatch.Alarm(this, id, {
      ...props,
      // No traffic is not a fault.
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.alarms.push(alarm);
    return alarm;
  }
}
