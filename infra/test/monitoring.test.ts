import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { METRIC_NAMESPACE, VEND_OUTCOMES } from '../lib/metrics';
import { CONFIGS, flatten, onlyLogicalId, synth } from './helpers';

interface Widget {
  properties: {
    title: string;
    metrics?: unknown[][];
    annotations?: { horizontal?: { value: number; label: string }[] };
  };
}

function dashboard(context: Record<string, unknown>): Widget[] {
  const { template } = synth(context);
  const dashboards = Object.values(template.findResources('AWS::CloudWatch::Dashboard'));
  assert.equal(dashboards.length, 1);
  // The body is a Fn::Join over tokens such as the function name: render those as ${...}.
  return JSON.parse(flatten(dashboards[0].Properties.DashboardBody)).widgets;
}

function widget(widgets: Widget[], title: string): Widget {
  const found = widgets.find((w) => w.properties.title === title);
  assert.ok(found, `no widget "${title}" in ${widgets.map((w) => w.properties.title).join(', ')}`);
  return found;
}

/** [namespace, metricName, ...dimension pairs, options] rows of a graph widget. */
function metricRows(w: Widget): string[][] {
  return (w.properties.metrics ?? []).map((row) => row.filter((cell) => typeof cell === 'string') as string[]);
}

describe('dashboard', () => {
  const widgets = dashboard(CONFIGS.default);

  it('shows vends by each outcome', () => {
    const rows = metricRows(widget(widgets, 'Vends by outcome'));
    assert.deepEqual(
      rows,
      VEND_OUTCOMES.map((outcome) => [METRIC_NAMESPACE, 'Vends', 'Outcome', outcome]),
    );
  });

  it('shows vend latency p50 and p99', () => {
    const w = widget(widgets, 'Vend latency');
    const stats = (w.properties.metrics ?? []).map((row) => (row[row.length - 1] as { stat: string }).stat);
    assert.deepEqual(stats, ['p50', 'p99']);
    for (const row of metricRows(w)) assert.deepEqual(row.slice(0, 2), [METRIC_NAMESPACE, 'VendLatency']);
  });

  it('shows AWS throttles next to API Gateway 4xx/5xx and Lambda throttles and errors', () => {
    const rows = metricRows(widget(widgets, 'Throttles and errors')).map((r) => r.slice(0, 2).join('/'));
    assert.deepEqual(rows, [
      `${METRIC_NAMESPACE}/UpstreamThrottles`,
      'AWS/ApiGateway/4xx',
      'AWS/ApiGateway/5xx',
      'AWS/Lambda/Throttles',
      'AWS/Lambda/Errors',
    ]);
  });

  it('shows lockouts', () => {
    assert.deepEqual(metricRows(widget(widgets, 'Lockouts')), [[METRIC_NAMESPACE, 'Lockouts']]);
  });

  it('adds provider latency p99 against the 5000 ms deadline when the provider is deployed', () => {
    assert.equal(widgets.find((w) => w.properties.title.startsWith('Certificate provider')), undefined);
    const withProvider = dashboard(CONFIGS.provider);
    const latency = widget(withProvider, 'Certificate provider latency p99');
    assert.deepEqual(metricRows(latency), [[METRIC_NAMESPACE, 'ProviderLatency']]);
    const values = latency.properties.annotations?.horizontal?.map((a) => a.value);
    assert.ok(values?.includes(5000), 'no 5000 ms annotation');
    const errors = metricRows(widget(withProvider, 'Certificate provider errors')).map((r) => r[1]);
    assert.deepEqual(errors, ['ProviderErrors', 'Errors']);
  });
});

describe('alarms', () => {
  it('alarm on the vend error rate from failed vends and Lambda errors', () => {
    const { template } = synth(CONFIGS.default);
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction');
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Threshold: 5,
      ComparisonOperator: 'GreaterThanThreshold',
      TreatMissingData: 'notBreaching',
      Metrics: Match.arrayWith([
        Match.objectLike({ Expression: Match.stringLikeRegexp('failed.*errors.*invocations'), ReturnData: true }),
        Match.objectLike({
          Id: 'failed',
          MetricStat: Match.objectLike({
            Metric: {
              Namespace: METRIC_NAMESPACE,
              MetricName: 'Vends',
              Dimensions: [{ Name: 'Outcome', Value: 'failed' }],
            },
            Stat: 'Sum',
          }),
        }),
        Match.objectLike({
          Id: 'errors',
          MetricStat: Match.objectLike({
            Metric: { Namespace: 'AWS/Lambda', MetricName: 'Errors', Dimensions: [{ Name: 'FunctionName', Value: { Ref: fn } }] },
          }),
        }),
      ]),
    });
  });

  it('alarm on sustained upstream throttling', () => {
    synth(CONFIGS.default).template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: METRIC_NAMESPACE,
      MetricName: 'UpstreamThrottles',
      Statistic: 'Sum',
      Threshold: 0,
      ComparisonOperator: 'GreaterThanThreshold',
      EvaluationPeriods: 3,
      DatapointsToAlarm: 3,
    });
  });

  it('alarm on Lambda throttles of the vend function', () => {
    const { template } = synth(CONFIGS.default);
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction');
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/Lambda',
      MetricName: 'Throttles',
      Dimensions: [{ Name: 'FunctionName', Value: { Ref: fn } }],
      Threshold: 0,
    });
  });

  it('has three alarms without the provider and six with it', () => {
    synth(CONFIGS.default).template.resourceCountIs('AWS::CloudWatch::Alarm', 3);
    synth(CONFIGS.provider).template.resourceCountIs('AWS::CloudWatch::Alarm', 6);
  });

  it('alarm when provider p99 latency exceeds 4000 ms', () => {
    synth(CONFIGS.provider).template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: METRIC_NAMESPACE,
      MetricName: 'ProviderLatency',
      ExtendedStatistic: 'p99',
      Threshold: 4000,
      ComparisonOperator: 'GreaterThanThreshold',
    });
  });

  it('notify the alarm topic when one is configured', () => {
    const topic = 'arn:aws:sns:eu-west-1:123456789012:cvm-ops';
    const { template } = synth({ alarmTopicArn: topic });
    const alarms = Object.values(template.findResources('AWS::CloudWatch::Alarm'));
    assert.equal(alarms.length, 3);
    for (const alarm of alarms) {
      assert.deepEqual(alarm.Properties.AlarmActions, [topic]);
      assert.deepEqual(alarm.Properties.OKActions, [topic]);
    }
    for (const alarm of Object.values(synth(CONFIGS.default).template.findResources('AWS::CloudWatch::Alarm'))) {
      assert.equal(alarm.Properties.AlarmActions, undefined);
    }
  });
});
