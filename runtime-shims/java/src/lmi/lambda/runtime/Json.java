package lmi.lambda.runtime;

import java.util.List;

/** Writing JSON text: the shim only ever writes JSON (log records, error bodies), it never parses it. */
final class Json {
    private final StringBuilder out = new StringBuilder(128).append('{');
    private boolean first = true;

    /** Starts an object; add members with {@link #field} and finish with {@link #toString}. */
    static Json object() {
        return new Json();
    }

    /** Adds a string member (skipped when {@code value} is null). */
    Json field(String name, String value) {
        if (value != null) {
            key(name);
            quote(out, value);
        }
        return this;
    }

    /** Adds a member whose value is already JSON text. */
    Json raw(String name, String json) {
        key(name);
        out.append(json);
        return this;
    }

    /** Adds an array of strings. */
    Json field(String name, List<String> values) {
        key(name);
        out.append('[');
        for (int i = 0; i < values.size(); i++) {
            if (i > 0) {
                out.append(',');
            }
            quote(out, values.get(i));
        }
        out.append(']');
        return this;
    }

    private void key(String name) {
        if (!first) {
            out.append(',');
        }
        first = false;
        quote(out, name);
        out.append(':');
    }

    @Override
    public String toString() {
        return out + "}";
    }

    /** Appends {@code s} as a JSON string literal (lone surrogates become U+FFFD). */
    static void quote(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20 || c == 0x2028 || c == 0x2029) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else if (Character.isHighSurrogate(c) && i + 1 < s.length()
                            && Character.isLowSurrogate(s.charAt(i + 1))) {
                        out.append(c).append(s.charAt(++i));
                    } else if (Character.isSurrogate(c)) {
                        out.append('\uFFFD');
                    } else {
                        out.append(c);
                    }
            }
        }
        out.append('"');
    }

    /** {@code s} as a JSON string literal. */
    static String quote(String s) {
        StringBuilder b = new StringBuilder(s.length() + 2);
        quote(b, s);
        return b.toString();
    }

    private Json() {}
}
