package lmi.lambda.runtime;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import lmi.lambda.Context;
import lmi.lambda.RequestHandler;
import lmi.lambda.RequestStreamHandler;

/** Calls the function's handler for one invoke: event bytes in, response bytes out. */
interface Invoker {
    /** Runs the handler; whatever it throws is the function error. */
    byte[] invoke(byte[] event, Context context) throws Throwable;

    /** How the event is handed to a handler. */
    enum Input {
        /** No event parameter. */
        NONE,
        /** {@code String}: the event as UTF-8 text. */
        STRING,
        /** {@code byte[]}: the raw event. */
        BYTES,
        /** {@code InputStream} over the raw event. */
        STREAM;

        Object convert(byte[] event) {
            return switch (this) {
                case NONE -> null;
                case STRING -> new String(event, StandardCharsets.UTF_8);
                case BYTES -> event;
                case STREAM -> new ByteArrayInputStream(event);
            };
        }
    }

    /** A handler implementing {@link RequestHandler}. */
    static Invoker typed(RequestHandler<Object, Object> handler, Input input) {
        return (event, context) -> result(handler.handleRequest(input.convert(event), context));
    }

    /** A handler implementing {@link RequestStreamHandler}. */
    static Invoker streams(RequestStreamHandler handler) {
        return (event, context) -> {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            handler.handleRequest(new ByteArrayInputStream(event), out, context);
            return out.toByteArray();
        };
    }

    /**
     * A public method of any class. {@code output} says whether an {@code OutputStream} follows the input
     * (its content is then the response and the return value is ignored); {@code context} whether a
     * {@link Context} comes last.
     */
    static Invoker method(Object target, Method method, Input input, boolean output, boolean context) {
        Object instance = Modifier.isStatic(method.getModifiers()) ? null : target;
        return (event, ctx) -> {
            Object[] args = new Object[method.getParameterCount()];
            int i = 0;
            if (input != Input.NONE) {
                args[i++] = input.convert(event);
            }
            ByteArrayOutputStream out = output ? new ByteArrayOutputStream() : null;
            if (output) {
                args[i++] = out;
            }
            if (context) {
                args[i] = ctx;
            }
            Object r;
            try {
                r = method.invoke(instance, args);
            } catch (InvocationTargetException e) {
                throw e.getCause() == null ? e : e.getCause();
            }
            return output ? out.toByteArray() : method.getReturnType() == void.class ? new byte[0] : result(r);
        };
    }

    /**
     * The response body of a handler's result: {@code String} and {@code byte[]} unchanged, numbers and
     * booleans as their JSON literal, null as {@code null}; anything else is a {@code Runtime.MarshalError}.
     */
    static byte[] result(Object r) throws Fault {
        if (r == null) {
            return "null".getBytes(StandardCharsets.US_ASCII);
        }
        if (r instanceof String s) {
            return s.getBytes(StandardCharsets.UTF_8);
        }
        if (r instanceof byte[] b) {
            return b;
        }
        if (r instanceof Number || r instanceof Boolean) {
            return r.toString().getBytes(StandardCharsets.US_ASCII);
        }
        throw new Fault("Runtime.MarshalError", "Unable to marshal a result of type " + r.getClass().getName()
                + ": return String (JSON text), byte[], a number, a boolean or null");
    }

    /** The {@link Input} of a parameter type, or null when the type cannot take the event. */
    static Input inputOf(Class<?> type) {
        if (type == String.class || type == Object.class || type == CharSequence.class) {
            return Input.STRING;
        }
        if (type == byte[].class) {
            return Input.BYTES;
        }
        if (type == InputStream.class) {
            return Input.STREAM;
        }
        return null;
    }

    /** True for a parameter that can take the response stream. */
    static boolean isOutput(Class<?> type) {
        return type == OutputStream.class;
    }
}
