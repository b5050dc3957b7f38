import { Aws, Duration } from 'aws-cdk-lib';
import type * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import {
  HOOK_OUTCOMES,
  IOT_DEADLINE_MS,
  LATENCY_ALARM_MS,
  METRIC_NAMESPACE,
  METRICS,
  OUTCOME_DIMENSION,
  STAGE_DIMENSION,
} from './metrics';

export interface MonitoringProps {
  readonly stage: string;
  readonly vendFunction: lambda.IFunction;
  readonly apiStage: apigwv2.IHttpStage;
  /** Present when the certificate provider is deployed. */
  readonly providerFunction?: lambda.IFunction;
  /** Present when fleet provisioning is deployed. */
  readonly hookFunction?: lambda.IFunction;
  readonly alarmTopicArn?: string;
}

/** Failed vends plus Lambda errors, as a share of invocations, above which the error-rate alarm fires. */
export const VEND_ERROR_RATE_PERCENT = 5;

const FIVE_MINUTES = Duration.minutes(5);

/**
 * The operations view: a dashboard of the functions' own metrics (published as CloudWatch
 * Embedded Metric Format in their logs) next to the API Gateway and Lambda metrics, and
 * alarms on what needs a person: failing vends, a certificate provider or provisioning hook
 * failing or nearing AWS IoT's 5-second deadline, sustained throttling by AWS, and Lambda
 * throttling. What devices get wrong (a bad CSR, a wrong token, a refused subject) shows on
 * the dashboard and pages nobody.
 *
 * Every metric of the functions is read with the deployment's `Stage` dimension.
 */
export class Monitoring extends Construct {
  readonly dashboard: cloudwatch.Dashboard;
  readonly alarms: cloudwatch.Alarm[] = [];
  private readonly stage: string;

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);
    const { vendFunction, providerFunction, hookFunction, apiStage } = props;
    this.stage = props.stage;

    const failedVends = this.metric(METRICS.vends, 'Sum', { [OUTCOME_DIMENSION]: 'failed' });
    const failedRenewals = this.metric(METRICS.renewals, 'Sum', { [OUTCOME_DIMENSION]: 'failed' });
    const upstreamThrottles = this.metric(METRICS.upstreamThrottles, 'Sum');
    const lockouts = this.metric(METRICS.lockouts, 'Sum');

    // Vend error rate: vends and renewals the function answered with a server error plus
    // invocations that failed outright (crash, timeout), per invocation.
    const vendErrorRate = new cloudwatch.MathExpression({
      label: 'Vend error rate (%)',
      expression:
        'IF(FILL(invocations, 0) > 0, 100 * (FILL(failed, 0) + FILL(renewalsFailed, 0) + FILL(errors, 0)) / FILL(invocations, 0), 0)',
      usingMetrics: {
        failed: failedVends,
        renewalsFailed: failedRenewals,
        errors: vendFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum' }),
        invocations: vendFunction.metricInvocations({ period: FIVE_MINUTES, statistic: 'Sum' }),
      },
      period: FIVE_MINUTES,
    });

    this.addAlarm('VendErrorRate', {
      alarmDescription:
        `More than ${VEND_ERROR_RATE_PERCENT}% of vend function invocations failed (Vends or Renewals{Outcome=failed}, or Lambda Errors) ` +
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

    this.addThrottleAlarm('VendLambdaThrottles', 'the vend function', vendFunction);

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
    if (hookFunction) {
      throttleAndErrorMetrics.push(
        hookFunction.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Hook Lambda throttles' }),
      );
    }

    const widgets: cloudwatch.IWidget[][] = [
      [
        this.outcomesWidget('Vends by outcome', METRICS.vends),
        this.latencyWidget('Vend latency', METRICS.vendLatency, ['p50', 'p99']),
      ],
      [
        this.outcomesWidget('Renewals by outcome', METRICS.renewals),
        this.latencyWidget('Renewal latency', METRICS.renewalLatency, ['p50', 'p99']),
      ],
      [
        new cloudwatch.GraphWidget({
          title: 'Throttles and errors',
          left: throttleAndErrorMetrics,
          width: 12,
        }),
        new cloudwatch.GraphWidget({
          title: 'Lockouts',
          left: [lockouts.with({ label: 'Backoff windows opened' })],
          width: 12,
        }),
      ],
    ];

    if (providerFunction) {
      const providerLatencyP99 = this.metric(METRICS.providerLatency, 'p99', undefined, Duration.minutes(1));
      const providerFaults = this.metric(METRICS.providerFaults, 'Sum');

      this.addLatencyAlarm('ProviderLatencyP99', 'Certificate provider', providerLatencyP99, 'fleet provisioning fails');

      this.addAlarm('ProviderFaults', {
        alarmDescription:
          'The certificate provider failed for reasons that are not the device\'s (ProviderFaults: Private CA errors, ' +
          'timeouts, certificate mismatches) in 2 of the last 3 five-minute periods: fleet-provisioning ' +
          'CreateCertificateFromCsr calls fail. Refused CSRs (ProviderRefusals) are device mistakes and do not count.',
        metric: providerFaults,
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        datapointsToAlarm: 2,
      });

      this.addThrottleAlarm('ProviderLambdaThrottles', 'the certificate provider', providerFunction);

      widgets.push([
        this.deadlineWidget('Certificate provider latency p99', providerLatencyP99),
        new cloudwatch.GraphWidget({
          title: 'Certificate provider refusals and faults',
          left: [
            this.metric(METRICS.providerRefusals, 'Sum').with({ label: 'Refused CSRs (device mistakes)' }),
            providerFaults.with({ label: 'Faults' }),
            providerFunction.metricErrors({ period: FIVE_MINUTES, statistic: 'Sum', label: 'Provider Lambda errors' }),
          ],
          width: 12,
        }),
      ]);
    }

    if (hookFunction) {
      const hookLatencyP99 = this.metric(METRICS.hookLatency, 'p99', undefined, Duration.minutes(1));
      const hookFaults = this.metric(METRICS.hookFaults, 'Sum');

      this.addLatencyAlarm('HookLatencyP99', 'Pre-provisioning hook', hookLatencyP99, 'RegisterThing fails');

      this.addAlarm('HookFaults', {
        alarmDescription:
          'The pre-provisioning hook failed for reasons that are not the device\'s (HookFaults: DynamoDB or AWS IoT ' +
          'errors) in 2 of the last 3 five-minute periods: fleet-provisioning RegisterThing calls fail. ' +
          'Denied devices (HookDecisions{Outcome=denied}) do not count.',
        metric: hookFaults,
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        datapointsToAlarm: 2,
      });

      this.addThrottleAlarm('HookLambdaThrottles', 'the pre-provisioning hook', hookFunction);

      widgets.push([
        this.deadlineWidget('Provisioning hook latency p99', hookLatencyP99),
        new cloudwatch.GraphWidget({
          title: 'Provisioning hook decisions and faults',
          left: [
            ...HOOK_OUTCOMES.map((outcome) =>
              this.metric(METRICS.hookDecisions, 'Sum', { [OUTCOME_DIMENSION]: outcome }).with({ label: outcome }),
            ),
            hookFaults.with({ label: 'Faults' }),
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

  /** A metric of the functions, for this stage. */
  private metric(metricName: string, statistic: string, dimensions?: Record<string, string>, period = FIVE_MINUTES) {
    return new cloudwatch.Metric({
      namespace: METRIC_NAMESPACE,
      metricName,
      statistic,
      dimensionsMap: { [STAGE_DIMENSION]: this.stage, ...dimensions },
      period,
    });
  }

  /**
   * Counts of a metric by outcome, for this stage. A search rather than a fixed list of
   * outcomes: every outcome the function publishes shows, including ones added later.
   */
  private outcomesWidget(title: string, metricName: string): cloudwatch.GraphWidget {
    return new cloudwatch.GraphWidget({
      title,
      left: [
        new cloudwatch.MathExpression({
          expression:
            `SEARCH('{${METRIC_NAMESPACE},${OUTCOME_DIMENSION},${STAGE_DIMENSION}} ` +
            `MetricName="${metricName}" ${STAGE_DIMENSION}="${this.stage}"', 'Sum', ${FIVE_MINUTES.toSeconds()})`,
          label: `\${PROP('Dim.${OUTCOME_DIMENSION}')}`,
          usingMetrics: {},
          period: FIVE_MINUTES,
        }),
      ],
      stacked: true,
      width: 12,
    });
  }

  private latencyWidget(title: string, metricName: string, statistics: string[]): cloudwatch.GraphWidget {
    return new cloudwatch.GraphWidget({
      title,
      left: statistics.map((statistic) => this.metric(metricName, statistic).with({ label: statistic })),
      leftYAxis: { label: 'ms', showUnits: false, min: 0 },
      width: 12,
    });
  }

  private deadlineWidget(title: string, p99: cloudwatch.Metric): cloudwatch.GraphWidget {
    return new cloudwatch.GraphWidget({
      title,
      left: [p99.with({ label: 'p99' })],
      leftYAxis: { label: 'ms', showUnits: false, min: 0 },
      leftAnnotations: [
        { value: IOT_DEADLINE_MS, label: 'AWS IoT deadline', color: cloudwatch.Color.RED },
        { value: LATENCY_ALARM_MS, label: 'Alarm', color: cloudwatch.Color.ORANGE },
      ],
      width: 12,
    });
  }

  private addLatencyAlarm(id: string, what: string, p99: cloudwatch.Metric, consequence: string): void {
    this.addAlarm(id, {
      alarmDescription:
        `${what} p99 latency above ${LATENCY_ALARM_MS} ms in 3 of the last 5 minutes; ` +
        `AWS IoT abandons the call at ${IOT_DEADLINE_MS} ms and ${consequence}.`,
      metric: p99,
      threshold: LATENCY_ALARM_MS,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
    });
  }

  private addThrottleAlarm(id: string, what: string, fn: lambda.IFunction): void {
    this.addAlarm(id, {
      alarmDescription: `Lambda throttled ${what} (its reserved concurrency is exhausted) in 2 of the last 3 five-minute periods.`,
      metric: fn.metricThrottles({ period: FIVE_MINUTES, statistic: 'Sum' }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 3,
      datapointsToAlarm: 2,
    });
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
