using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>Writing JSON text. The shim only writes JSON (log records, error bodies); it never parses it.</summary>
    internal sealed class Json
    {
        private readonly StringBuilder _out = new StringBuilder(128).Append('{');
        private bool _first = true;

        /// <summary>Starts an object; add members, then <see cref="ToString"/>.</summary>
        public static Json Object()
        {
            return new Json();
        }

        /// <summary>Adds a string member (skipped when the value is null).</summary>
        public Json Field(string name, string value)
        {
            if (value != null)
            {
                Key(name);
                Quote(_out, value);
            }
            return this;
        }

        /// <summary>Adds an array of strings.</summary>
        public Json Field(string name, IList<string> values)
        {
            Key(name);
            _out.Append('[');
            for (int i = 0; i < values.Count; i++)
            {
                if (i > 0)
                {
                    _out.Append(',');
                }
                Quote(_out, values[i]);
            }
            _out.Append(']');
            return this;
        }

        /// <summary>Adds a member whose value is already JSON text.</summary>
        public Json Raw(string name, string json)
        {
            Key(name);
            _out.Append(json);
            return this;
        }

        private void Key(string name)
        {
            if (!_first)
            {
                _out.Append(',');
            }
            _first = false;
            Quote(_out, name);
            _out.Append(':');
        }

        public override string ToString()
        {
            return _out.ToString() + "}";
        }

        /// <summary>Appends <paramref name="s"/> as a JSON string literal (lone surrogates become U+FFFD).</summary>
        public static void Quote(StringBuilder b, string s)
        {
            b.Append('"');
            for (int i = 0; i < s.Length; i++)
            {
                char c = s[i];
                switch (c)
                {
                    case '"': b.Append("\\\""); break;
                    case '\\': b.Append("\\\\"); break;
                    case '\n': b.Append("\\n"); break;
                    case '\r': b.Append("\\r"); break;
                    case '\t': b.Append("\\t"); break;
                    case '\b': b.Append("\\b"); break;
                    case '\f': b.Append("\\f"); break;
                    default:
                        if (c < 0x20 || c == '\u2028' || c == '\u2029')
                        {
                            b.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        }
                        else if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
                        {
                            b.Append(c).Append(s[++i]);
                        }
                        else if (char.IsSurrogate(c))
                        {
                            b.Append('\uFFFD');
                        }
                        else
                        {
                            b.Append(c);
                        }
                        break;
                }
            }
            b.Append('"');
        }

        /// <summary><paramref name="s"/> as a JSON string literal.</summary>
        public static string Quote(string s)
        {
            var b = new StringBuilder(s.Length + 2);
            Quote(b, s);
            return b.ToString();
        }
    }
}
