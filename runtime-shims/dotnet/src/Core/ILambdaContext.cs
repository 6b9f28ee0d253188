using System;

namespace Lmi.Lambda
{
    /// <summary>What a handler knows about the invoke it runs and the function it belongs to.</summary>
    /// <remarks>One instance per invoke; usable from any thread or task while the invoke runs.</remarks>
    public interface ILambdaContext
    {
        /// <summary>The request id of this invoke (<c>Lambda-Runtime-Aws-Request-Id</c>).</summary>
        string AwsRequestId { get; }

        /// <summary>Time left until this invoke's deadline; zero once it has passed.</summary>
        TimeSpan RemainingTime { get; }

        /// <summary>The deadline of this invoke, in milliseconds since the Unix epoch.</summary>
        long DeadlineMs { get; }

        /// <summary><c>AWS_LAMBDA_FUNCTION_NAME</c>.</summary>
        string FunctionName { get; }

        /// <summary><c>AWS_LAMBDA_FUNCTION_VERSION</c>.</summary>
        string FunctionVersion { get; }

        /// <summary>The ARN the caller invoked (<c>Lambda-Runtime-Invoked-Function-Arn</c>).</summary>
        string InvokedFunctionArn { get; }

        /// <summary><c>AWS_LAMBDA_FUNCTION_MEMORY_SIZE</c> in MB (0 when unset).</summary>
        int MemoryLimitInMB { get; }

        /// <summary><c>AWS_LAMBDA_LOG_GROUP_NAME</c>.</summary>
        string LogGroupName { get; }

        /// <summary><c>AWS_LAMBDA_LOG_STREAM_NAME</c>.</summary>
        string LogStreamName { get; }

        /// <summary>The X-Ray trace header of this invoke, or null.</summary>
        string TraceId { get; }

        /// <summary>The client context as the JSON text the caller sent, or null.</summary>
        string ClientContextJson { get; }

        /// <summary>The Cognito identity as JSON text, or null.</summary>
        string IdentityJson { get; }

        /// <summary>A logger whose records carry this invoke's request id.</summary>
        ILambdaLogger Logger { get; }
    }
}
