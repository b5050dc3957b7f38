import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match, type Template } from 'aws-cdk-lib/assertions';
import { METRIC_NAMESPACE } from '../lib/metrics';
import { CONFIGS, TEST_STAGE, flatten, onlyLogicalId, synth } from './helpers';

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

/** Dimension pairs of a dashboard metric row, as an object. */
function dimensions(row: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 2; i + 1 < row.length; i += 2) out[row[i]] = row[i + 1];
  return out;
}

describe('dashboard', () => {
  const widgets = dashboard(CONFIGS.default);

  it('shows every vend outcome of this stage, by a search on Stage', () => {
    const w = widget(widgets, 'Vends by outcome');
    assert.equal(w.properties.metrics?.length, 1);
    const [expression] = w.properties.metrics?.[0] as [{ expression: string; label: string }];
    assert.equal(
      expression.expression,
      `SEARCH('{${METRIC_NAMESPACE},Outcome,Stage} MetricName="Vends" Stage="${TEST_STAGE}"', 'Sum', 300)`,
    );
    assert.equal(expression.label, "${PROP('Dim.Outcome')}");
  });

  it('shows every renewal outcome of this stage, and renewal latency', () => {
    const [expression] = widget(widgets, 'Renewals by outcome').properties.metrics?.[0] as [{ expression: string }];
    assert.equal(
      expression.expression,
      `SEARCH('{${METRIC_NAMESPACE},Outcome,Stage} MetricName="Renewals" Stage="${TEST_STAGE}"', 'Sum', 300)`,
    );
    assert.deepEqual(
      metricRows(widget(widgets, 'Renewal latency')),
      [
        [METRIC_NAMESPACE, 'RenewalLatency', 'Stage', TEST_STAGE],
        [METRIC_NAMESPACE, 'RenewalLatency', 'Stage', TEST_STAGE],
      ],
    );
  });

  it('shows vend latency p50 and p99 of this stage', () => {
    const w = widget(widgets, 'Vend latency');
    const stats = (w.properties.metrics ?? []).map((row) => (row[row.length - 1] as { stat: string }).stat);
    assert.deepEqual(stats, ['p50', 'p99']);
    for (const row of metricRows(w)) {
      assert.deepEqual(row.slice(0, 2), [METRIC_NAMESPACE, 'VendLatency']);
      assert.deepEqual(dimensions(row), { Stage: TEST_STAGE });
    }
  });

  it('shows AWS throttles next to API Gateway 4xx/5xx and Lambda throttles and errors', () => {
    const rows = metricRows(widget(widgets, 'Throttles and errors'));
    assert.deepEqual(
      rows.map((r) => r.slice(0, 2).join('/')),
      [`${METRIC_NAMESPACE}/UpstreamThrottles`, 'AWS/ApiGateway/4xx', 'AWS/ApiGateway/5xx', 'AWS/Lambda/Throttles', 'AWS/Lambda/Errors'],
    );
    assert.deepEqual(dimensions(rows[0]), { Stage: TEST_STAGE });
  });

  it('shows lockouts of this stage', () => {
    assert.deepEqual(metricRows(widget(widgets, 'Lockouts')), [[METRIC_NAMESPACE, 'Lockouts', 'Stage', TEST_STAGE]]);
  });

  it('adds provider latency p99 against the 5000 ms deadline, refusals apart from faults, when the provider is deployed', () => {
    assert.equal(widgets.find((w) => w.properties.title.startsWith('Certificate provider')), undefined);
    const withProvider = dashboard(CONFIGS.provider);
    const latency = widget(withProvider, 'Certificate provider latency p99');
    assert.deepEqual(metricRows(latency), [[METRIC_NAMESPACE, 'ProviderLatency', 'Stage', TEST_STAGE]]);
    const values = latency.properties.annotations?.horizontal?.map((a) => a.value);
    assert.ok(values?.includes(5000), 'no 5000 ms annotation');
    const outcomes = metricRows(widget(withProvider, 'Certificate provider refusals and faults')).map((r) => r[1]);
    assert.deepEqual(outcomes, ['ProviderRefusals', 'ProviderFaults', 'Errors']);
  });

  it('adds hook decisions, faults and latency when fleet provisioning is deployed', () => {
    assert.equal(widgets.find((w) => w.properties.title.startsWith('Provisioning hook')), undefined);
    const withHook = dashboard(CONFIGS.fleet);
    const decisions = metricRows(widget(withHook, 'Provisioning hook decisions and faults'));
    assert.deepEqual(decisions, [
      [METRIC_NAMESPACE, 'HookDecisions', 'Outcome', 'allowed', 'Stage', TEST_STAGE],
      [METRIC_NAMESPACE, 'HookDecisions', 'Outcome', 'denied', 'Stage', TEST_STAGE],
      [METRIC_NAMESPACE, 'HookFaults', 'Stage', TEST_STAGE],
    ]);
    assert.deepEqual(metricRows(widget(withHook, 'Provisioning hook latency p99')), [
      [METRIC_NAMESPACE, 'HookLatency', 'Stage', TEST_STAGE],
    ]);
  });
});

/** The alarm (by description prefix) of a template. */
function alarmOn(template: Template, metricName: string): Record<string, any> {
  const found = Object.values(template.findResources('AWS::CloudWatch::Alarm')).filter(
    (a) => a.Properties.MetricName === metricName,
  );
  assert.equal(found.length, 1, `alarms on ${metricName}: ${found.length}`);
  return found[0].Properties;
}

/** Every metric any alarm watches, as namespace/name. */
function watchedMetrics(template: Template): string[] {
  const names = new Set<string>();
  for (const alarm of Object.values(template.findResources('AWS::CloudWatch::Alarm'))) {
    const p = alarm.Properties;
    if (p.MetricName) names.add(`${p.Namespace}/${p.MetricName}`);
    for (const m of p.Metrics ?? []) {
      if (m.MetricStat) names.add(`${m.MetricStat.Metric.Namespace}/${m.MetricStat.Metric.MetricName}`);
    }
  }
  return [...names].sort();
}

describe('alarms', () => {
  it('alarm on the vend error rate from failed vends and renewals of this stage and Lambda errors', () => {
    const { template } = synth(CONFIGS.default);
    const fn = onlyLogicalId(template, 'AWS::Lambda::Function', 'VendFunction');
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Threshold: 5,
      ComparisonOperator: 'GreaterThanThreshold',
      TreatMissingData: 'notBreaching',
      Metrics: Match.arrayWith([
        Match.objectLike({ Expression: Match.stringLikeRegexp('failed.*renewalsFailed.*errors.*invocations'), ReturnData: true }),
        Match.objectLike({
          Id: 'failed',
          MetricStat: Match.objectLike({
            Metric: {
              Namespace: METRIC_NAMESPACE,
              MetricName: 'Vends',
              Dimensions: [
                { Name: 'Outcome', Value: 'failed' },
                { Name: 'Stage', Value: TEST_STAGE },
              ],
            },
            Stat: 'Sum',
          }),
        }),
        Match.objectLike({
          Id: 'renewalsFailed',
          MetricStat: Match.objectLike({
            Metric: {
              Namespace: METRIC_NAMESPACE,
              MetricName: 'Renewals',
              Dimensions: [
                { Name: 'Outcome', Value: 'failed' },
                { Name: 'Stage', Value: TEST_STAGE },
              ],
            },
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

  it('alarm on sustained upstream throttling of this stage', () => {
    synth(CONFIGS.default).template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: METRIC_NAMESPACE,
      MetricName: 'UpstreamThrottles',
      Dimensions: [{ Name: 'Stage', Value: TEST_STAGE }],
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

  it('has three alarms alone, three more with the provider, three more with fleet provisioning', () => {
    synth(CONFIGS.default).template.resourceCountIs('AWS::CloudWatch::Alarm', 3);
    synth(CONFIGS.provider).template.resourceCountIs('AWS::CloudWatch::Alarm', 6);
    synth(CONFIGS.fleet).template.resourceCountIs('AWS::CloudWatch::Alarm', 6);
    synth({ ...CONFIGS.provider, ...CONFIGS.fleet }).template.resourceCountIs('AWS::CloudWatch::Alarm', 9);
  });

  it('alarm when provider p99 latency exceeds 4000 ms', () => {
    const alarm = alarmOn(synth(CONFIGS.provider).template, 'ProviderLatency');
    assert.equal(alarm.ExtendedStatistic, 'p99');
    assert.equal(alarm.Threshold, 4000);
    assert.equal(alarm.ComparisonOperator, 'GreaterThanThreshold');
    assert.deepEqual(alarm.Dimensions, [{ Name: 'Stage', Value: TEST_STAGE }]);
  });

  it('pages on provider faults only: refused CSRs (device mistakes) and Lambda errors are not in it', () => {
    const { template } = synth(CONFIGS.provider);
    const alarm = alarmOn(template, 'ProviderFaults');
    assert.equal(alarm.Namespace, METRIC_NAMESPACE);
    assert.deepEqual(alarm.Dimensions, [{ Name: 'Stage', Value: TEST_STAGE }]);
    assert.equal(alarm.Statistic, 'Sum');
    assert.equal(alarm.Threshold, 0);
    assert.deepEqual(watchedMetrics(template), [
      'AWS/Lambda/Errors',
      'AWS/Lambda/Invocations',
      'AWS/Lambda/Throttles',
      `${METRIC_NAMESPACE}/ProviderFaults`,
      `${METRIC_NAMESPACE}/ProviderLatency`,
      `${METRIC_NAMESPACE}/Renewals`,
      `${METRIC_NAMESPACE}/UpstreamThrottles`,
      `${METRIC_NAMESPACE}/Vends`,
    ]);
    // The only Lambda Errors an alarm reads are the vend function's (in the error rate).
    const providerFn = onlyLogicalId(template, 'AWS::Lambda::Function', 'CertificateProviderFunction');
    for (const alarm of Object.values(template.findResources('AWS::CloudWatch::Alarm'))) {
      const text = JSON.stringify(alarm.Properties.Metrics ?? alarm.Properties.Dimensions ?? []);
      if (text.includes(providerFn)) assert.equal(alarm.Properties.MetricName, 'Throttles');
    }
  });

  it('pages on hook faults and hook latency, not on denied devices', () => {
    const { template } = synth(CONFIGS.fleet);
    const faults = alarmOn(template, 'HookFaults');
    assert.deepEqual(faults.Dimensions, [{ Name: 'Stage', Value: TEST_STAGE }]);
    assert.equal(faults.Threshold, 0);
    assert.equal(faults.EvaluationPeriods, 3);
    assert.equal(faults.DatapointsToAlarm, 2);
    const latency = alarmOn(template, 'HookLatency');
    assert.equal(latency.ExtendedStatistic, 'p99');
    assert.equal(latency.Threshold, 4000);
    assert.deepEqual(
      watchedMetrics(template).filter((m) => m.startsWith(METRIC_NAMESPACE)),
      [
        `${METRIC_NAMESPACE}/HookFaults`,
        `${METRIC_NAMESPACE}/HookLatency`,
        `${METRIC_NAMESPACE}/Renewals`,
        `${METRIC_NAMESPACE}/UpstreamThrottles`,
        `${METRIC_NAMESPACE}/Vends`,
      ],
    );
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
