using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Tasks;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>Runs the function's handler for one invoke: event bytes in, response bytes out.</summary>
    internal delegate Task<byte[]> Invoker(byte[] evt, ILambdaContext context);

    /// <summary>
    /// Turns <c>_HANDLER</c> (<c>Assembly::Namespace.Type::Method</c>) into an <see cref="Invoker"/>. The assembly
    /// is <c>LAMBDA_TASK_ROOT/Assembly.dll</c> (or <c>.exe</c>); its dependencies are resolved from the same
    /// directory. The type's static constructor runs during init; a handler that is not static is created once
    /// (public parameterless constructor) and shared by every concurrent invoke.
    /// </summary>
    internal static class HandlerResolver
    {
        public const string Signatures =
            "(string|Stream|byte[] [, ILambdaContext]) or ([ILambdaContext]), returning void, Task, T or Task<T>";

        private enum Input { None, String, Stream, Bytes }

        private sealed class Candidate
        {
            public MethodInfo Method;
            public Input Input;
            public bool Context;

            public int Rank
            {
                get
                {
                    int kind = Input == Input.String ? 3 : Input == Input.Stream ? 2 : Input == Input.Bytes ? 1 : 0;
                    return Method.GetParameters().Length * 10 + kind;
                }
            }
        }

        /// <summary>Resolves the handler; throws a <see cref="Fault"/> or the exception of the user's initialiser.</summary>
        public static Invoker Resolve(string handler, string taskRoot)
        {
            string spec = (handler ?? "").Trim();
            string[] parts = spec.Split(new[] { "::" }, StringSplitOptions.None);
            if (parts.Length != 3 || parts.Any(p => p.Length == 0 || p.Contains(":")))
            {
                throw new Fault("Runtime.MalformedHandlerName",
                    "Bad handler '" + spec + "': expected Assembly::Namespace.Type::Method");
            }
            Assembly assembly = LoadAssembly(parts[0], taskRoot);
            Type type = assembly.GetType(parts[1], false);
            if (type == null)
            {
                throw new Fault("Runtime.ClassNotFound", "Type " + parts[1] + " not found in assembly " + parts[0]);
            }
            RuntimeHelpers.RunClassConstructor(type.TypeHandle); // TypeInitializationException: reported unwrapped
            return Bind(type, parts[2]);
        }

        private static Assembly LoadAssembly(string name, string taskRoot)
        {
            AppDomain.CurrentDomain.AssemblyResolve += (sender, args) =>
            {
                string simple = new AssemblyName(args.Name).Name;
                foreach (string ext in new[] { ".dll", ".exe" })
                {
                    string candidate = Path.Combine(taskRoot, simple + ext);
                    if (File.Exists(candidate))
                    {
                        return Assembly.LoadFrom(candidate);
                    }
                }
                return null;
            };
            foreach (string ext in new[] { ".dll", ".exe" })
            {
                string path = Path.Combine(taskRoot, name + ext);
                if (!File.Exists(path))
                {
                    continue;
                }
                try
                {
                    return Assembly.LoadFrom(path);
                }
                catch (BadImageFormatException e)
                {
                    throw new Fault("Runtime.AssemblyNotFound", "Cannot load " + path + ": " + e.Message);
                }
            }
            throw new Fault("Runtime.AssemblyNotFound", "Assembly " + name + " not found in " + taskRoot);
        }

        private static Invoker Bind(Type type, string name)
        {
            var named = type.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.Instance)
                .Where(m => m.Name == name && !m.IsGenericMethodDefinition)
                .ToList();
            var candidates = named.Select(Signature).Where(c => c != null)
                .OrderByDescending(c => c.Rank).ThenBy(c => c.Method.ToString(), StringComparer.Ordinal)
                .ToList();
            if (candidates.Count == 0)
            {
                throw new Fault("Runtime.HandlerNotFound", named.Count > 0
                    ? "No public method " + name + " of " + type.FullName + " has a supported signature " + Signatures
                    : "No public method " + name + " in type " + type.FullName);
            }
            Candidate best = candidates[0];
            object target = best.Method.IsStatic ? null : Instantiate(type);
            return Build(target, best);
        }

        private static object Instantiate(Type type)
        {
            if (type.IsAbstract || type.GetConstructor(Type.EmptyTypes) == null)
            {
                throw new Fault("Runtime.HandlerNotFound",
                    "Type " + type.FullName + " needs a public parameterless constructor to serve as a handler");
            }
            try
            {
                return Activator.CreateInstance(type);
            }
            catch (TargetInvocationException e)
            {
                throw ErrorReport.Unwrap(e); // the user's constructor failed
            }
        }

        private static Candidate Signature(MethodInfo m)
        {
            ParameterInfo[] p = m.GetParameters();
            int n = p.Length;
            bool context = n > 0 && p[n - 1].ParameterType == typeof(ILambdaContext);
            if (context)
            {
                n--;
            }
            if (!Returnable(m.ReturnType))
            {
                return null;
            }
            if (n == 0)
            {
                return new Candidate { Method = m, Input = Input.None, Context = context };
            }
            if (n != 1)
            {
                return null;
            }
            Type t = p[0].ParameterType;
            Input input = t == typeof(string) ? Input.String
                : t == typeof(Stream) ? Input.Stream
                : t == typeof(byte[]) ? Input.Bytes
                : t == typeof(object) ? Input.String
                : (Input)(-1);
            return (int)input < 0 ? null : new Candidate { Method = m, Input = input, Context = context };
        }

        private static bool Returnable(Type t)
        {
            return !t.IsByRef && !t.IsPointer;
        }

        private static Invoker Build(object target, Candidate c)
        {
            MethodInfo method = c.Method;
            Type returns = method.ReturnType;
            bool isTask = typeof(Task).IsAssignableFrom(returns);
            PropertyInfo result = isTask && returns.IsGenericType ? returns.GetProperty("Result") : null;
            return async (evt, context) =>
            {
                var args = new List<object>();
                if (c.Input == Input.String)
                {
                    args.Add(Encoding.UTF8.GetString(evt));
                }
                else if (c.Input == Input.Stream)
                {
                    args.Add(new MemoryStream(evt, false));
                }
                else if (c.Input == Input.Bytes)
                {
                    args.Add(evt);
                }
                if (c.Context)
                {
                    args.Add(context);
                }
                object r = method.Invoke(target, args.ToArray()); // TargetInvocationException: unwrapped by ErrorReport
                if (returns == typeof(void))
                {
                    return new byte[0];
                }
                if (isTask)
                {
                    var task = (Task)r;
                    if (task == null)
                    {
                        throw new Fault("Runtime.MarshalError", "The handler returned a null Task");
                    }
                    await task;
                    if (result == null)
                    {
                        return new byte[0];
                    }
                    r = result.GetValue(task, null);
                }
                return Marshal(r);
            };
        }

        /// <summary>
        /// The response body of a result: string and byte[] unchanged, a Stream's content, numbers and booleans as
        /// their JSON literal, null as <c>null</c>; anything else is a <c>Runtime.MarshalError</c>.
        /// </summary>
        public static byte[] Marshal(object r)
        {
            if (r == null)
            {
                return Encoding.ASCII.GetBytes("null");
            }
            var s = r as string;
            if (s != null)
            {
                return Encoding.UTF8.GetBytes(s);
            }
            var bytes = r as byte[];
            if (bytes != null)
            {
                return bytes;
            }
            var stream = r as Stream;
            if (stream != null)
            {
                using (stream)
                using (var copy = new MemoryStream())
                {
                    stream.CopyTo(copy);
                    return copy.ToArray();
                }
            }
            if (r is bool)
            {
                return Encoding.ASCII.GetBytes((bool)r ? "true" : "false");
            }
            if (r is int || r is long || r is short || r is byte || r is sbyte || r is uint || r is ulong || r is ushort
                || r is decimal)
            {
                return Encoding.ASCII.GetBytes(Convert.ToString(r, CultureInfo.InvariantCulture));
            }
            if (r is double || r is float)
            {
                double d = Convert.ToDouble(r, CultureInfo.InvariantCulture);
                if (!double.IsNaN(d) && !double.IsInfinity(d))
                {
                    return Encoding.ASCII.GetBytes(d.ToString("R", CultureInfo.InvariantCulture));
                }
            }
            throw new Fault("Runtime.MarshalError", "Unable to marshal a result of type " + r.GetType().FullName
                + ": return string (JSON text), byte[], Stream, a number, a bool or null");
        }
    }
}
