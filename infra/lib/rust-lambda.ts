import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';
import type { CpuArchitecture } from './config';

export interface RustLambdaProps {
  /** Absolute path of the crate's Cargo.toml. */
  readonly manifestPath: string;
  /** Binary target to build and deploy. */
  readonly binaryName: string;
  readonly description: string;
  readonly architecture: CpuArchitecture;
  readonly memorySize: number;
  readonly timeout: Duration;
  /** Undefined leaves the function on the account's unreserved pool. */
  readonly reservedConcurrency?: number;
  /** The deployment's stage: every function gets it as CVM_STAGE, the `Stage` dimension of its metrics. */
  readonly stage: string;
  readonly environment: Record<string, string>;
  readonly logRetention: logs.RetentionDays;
  /**
   * Every Lambda package of the workspace, named in each function's release build so that
   * the dependencies they share compile once (see `lambdaPackages` in lib/paths.ts).
   */
  readonly buildPackages: readonly string[];
}

/**
 * A Rust Lambda function built with cargo-lambda, with what every function of this
 * product shares: its own log group with a retention, JSON logs at INFO, its stage in
 * CVM_STAGE, and its own role that holds nothing but the right to write to that log group.
 * Callers add the AWS actions the function's code calls, one statement per purpose.
 */
export class RustLambda extends Construct {
  readonly function: lambda.Function;
  readonly role: iam.Role;
  readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: RustLambdaProps) {
    super(scope, id);

    // Created here rather than by Lambda on first invocation, so that it has a retention
    // and is owned by the stack. Retained on stack deletion: it holds the audit trail of
    // every vend.
    this.logGroup = new logs.LogGroup(this, 'LogGroup', {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // An explicit role instead of the default one, which would carry the
    // AWSLambdaBasicExecutionRole managed policy (logs on every log group of the account).
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `Execution role of ${props.binaryName}`,
    });

    this.function = new RustFunction(this, 'Function', {
      manifestPath: props.manifestPath,
      binaryName: props.binaryName,
      runtime: 'provided.al2023',
      architecture: props.architecture === 'arm64' ? lambda.Architecture.ARM_64 : lambda.Architecture.X86_64,
      bundling: {
        // Build exactly the dependency versions of the committed Cargo.lock, with the
        // features of all the Lambda packages unified (one build of the shared dependencies).
        cargoLambdaFlags: ['--locked', ...props.buildPackages.flatMap((name) => ['-p', name])],
      },
      description: props.description,
      memorySize: props.memorySize,
      timeout: props.timeout,
      reservedConcurrentExecutions: props.reservedConcurrency,
      environment: { ...props.environment, CVM_STAGE: props.stage },
      role: this.role,
      logGroup: this.logGroup,
      // The runtime sets AWS_LAMBDA_LOG_FORMAT=JSON and AWS_LAMBDA_LOG_LEVEL=INFO,
      // which the functions' tracing subscriber follows. Keep INFO or more verbose: the
      // metric lines (Embedded Metric Format) carry no level, so Lambda files them as INFO.
      // System logs at INFO keep the platform's report lines (duration, billed duration,
      // memory used, init duration) of every invocation: the cold-start and memory evidence.
      loggingFormat: lambda.LoggingFormat.JSON,
      applicationLogLevelV2: lambda.ApplicationLogLevel.INFO,
      systemLogLevelV2: lambda.SystemLogLevel.INFO,
    });

    this.function.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'WriteOwnLogs',
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [this.logGroup.logGroupArn],
      }),
    );
  }
}
