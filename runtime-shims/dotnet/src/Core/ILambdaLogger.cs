namespace Lmi.Lambda
{
    /// <summary>Writes one JSON log record per call, carrying the request id of its invoke.</summary>
    public interface ILambdaLogger
    {
        /// <summary>Logs <paramref name="message"/> at level INFO; newlines stay inside the one record.</summary>
        void Log(string message);

        /// <summary>Same as <see cref="Log(string)"/> (kept for handlers written with LogLine).</summary>
        void LogLine(string message);

        /// <summary>Logs at <paramref name="level"/>: TRACE, DEBUG, INFO, WARN, ERROR or FATAL.</summary>
        void Log(string level, string message);
    }
}
