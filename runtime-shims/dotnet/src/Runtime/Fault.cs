using System;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>A failure the runtime itself reports, with a <c>Runtime.*</c> error type and no stack trace.</summary>
    internal sealed class Fault : Exception
    {
        public Fault(string type, string message) : base(message)
        {
            Type = type;
        }

        /// <summary>The error type, e.g. <c>Runtime.HandlerNotFound</c>.</summary>
        public string Type { get; private set; }
    }
}
