package lmi.lambda.runtime;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import lmi.lambda.Context;
import lmi.lambda.RequestHandler;
import lmi.lambda.RequestStreamHandler;

/**
 * Turns {@code _HANDLER} ({@code package.Class::method}, or {@code package.Class} meaning
 * {@code handleRequest}) into an {@link Invoker}. Loading the class runs its static initialiser; a handler
 * that is not static is instantiated once, with its public no-argument constructor, and shared by all
 * threads.
 */
final class HandlerResolver {
    static final String DEFAULT_METHOD = "handleRequest";
    static final String SIGNATURES = "(String|byte[]|InputStream [, Context]), (InputStream, OutputStream [, Context])"
            + " or ([Context])";

    private HandlerResolver() {}

    /** Resolves the handler; a {@link Fault} or the exception of the user's initialiser on failure. */
    static Invoker resolve(String handler, ClassLoader loader) throws Throwable {
        String spec = handler == null ? "" : handler.trim();
        String className = spec;
        String methodName = null;
        int sep = spec.indexOf("::");
        if (sep >= 0) {
            className = spec.substring(0, sep);
            methodName = spec.substring(sep + 2);
        }
        if (className.isEmpty() || (methodName != null && methodName.isEmpty()) || className.contains(":")
                || (methodName != null && methodName.contains(":"))) {
            throw new Fault("Runtime.MalformedHandlerName",
                    "Bad handler '" + spec + "': expected package.Class::method or package.Class");
        }
        Class<?> cls = load(className, loader);
        boolean defaultMethod = methodName == null || methodName.equals(DEFAULT_METHOD);
        if (defaultMethod && RequestStreamHandler.class.isAssignableFrom(cls)) {
            return Invoker.streams((RequestStreamHandler) instantiate(cls));
        }
        if (defaultMethod && RequestHandler.class.isAssignableFrom(cls)) {
            Class<?> in = requestHandlerInput(cls);
            Invoker.Input input = Invoker.inputOf(in);
            if (input == null || input == Invoker.Input.NONE) {
                throw new Fault("Runtime.HandlerNotFound", "Handler " + cls.getName() + " takes " + in.getName()
                        + "; a RequestHandler input must be String, byte[], InputStream or Object");
            }
            @SuppressWarnings("unchecked")
            RequestHandler<Object, Object> h = (RequestHandler<Object, Object>) instantiate(cls);
            return Invoker.typed(h, input);
        }
        return method(cls, methodName == null ? DEFAULT_METHOD : methodName);
    }

    private static Class<?> load(String name, ClassLoader loader) throws Throwable {
        try {
            return Class.forName(name, true, loader);
        } catch (ClassNotFoundException | NoClassDefFoundError e) {
            throw new Fault("Runtime.ClassNotFound", "Class not found: " + name + " (" + e.getMessage() + ")");
        } catch (ExceptionInInitializerError e) {
            throw e.getCause() == null ? e : e.getCause(); // the user's static initialiser failed
        }
    }

    private static Object instantiate(Class<?> cls) throws Throwable {
        try {
            return cls.getConstructor().newInstance();
        } catch (NoSuchMethodException e) {
            throw new Fault("Runtime.HandlerNotFound", "Class " + cls.getName()
                    + " needs a public no-argument constructor to serve as a handler");
        } catch (InvocationTargetException e) {
            throw e.getCause() == null ? e : e.getCause(); // the user's constructor failed
        } catch (IllegalAccessException | InstantiationException e) {
            throw new Fault("Runtime.HandlerNotFound", "Cannot instantiate " + cls.getName() + ": " + e.getMessage());
        }
    }

    /** The input type argument of {@code RequestHandler<I, O>} on {@code cls} or a superclass (Object if unknown). */
    private static Class<?> requestHandlerInput(Class<?> cls) {
        for (Class<?> c = cls; c != null; c = c.getSuperclass()) {
            for (Type t : c.getGenericInterfaces()) {
                if (t instanceof ParameterizedType p && p.getRawType() == RequestHandler.class) {
                    Type arg = p.getActualTypeArguments()[0];
                    if (arg instanceof Class<?> k) {
                        return k;
                    }
                    if (arg instanceof ParameterizedType pa && pa.getRawType() instanceof Class<?> k) {
                        return k;
                    }
                    return Object.class;
                }
            }
        }
        return Object.class;
    }

    /** A candidate method with its parsed signature. */
    private record Candidate(Method method, Invoker.Input input, boolean output, boolean context) {
        int rank() {
            return method.getParameterCount() * 10 + (output ? 4 : 0) + switch (input) {
                case STRING -> 3;
                case BYTES -> 2;
                case STREAM -> 1;
                case NONE -> 0;
            };
        }
    }

    private static Invoker method(Class<?> cls, String name) throws Throwable {
        List<Candidate> candidates = new ArrayList<>();
        boolean named = false;
        for (Method m : cls.getMethods()) {
            if (!m.getName().equals(name) || m.isBridge() || m.isSynthetic()) {
                continue;
            }
            named = true;
            Candidate c = signature(m);
            if (c != null) {
                candidates.add(c);
            }
        }
        if (candidates.isEmpty()) {
            throw new Fault("Runtime.HandlerNotFound", named
                    ? "No public method " + name + " of " + cls.getName() + " has a supported signature " + SIGNATURES
                    : "No public method " + name + " in class " + cls.getName());
        }
        // Several overloads: the one with the most parameters wins (context, then output stream), then
        // String over byte[] over InputStream; the order does not depend on reflection's order.
        candidates.sort(Comparator.comparingInt(Candidate::rank).reversed()
                .thenComparing(c -> c.method().toGenericString()));
        Candidate best = candidates.get(0);
        Object target = Modifier.isStatic(best.method().getModifiers()) ? null : instantiate(cls);
        best.method().setAccessible(true); // public method of a possibly non-public class
        return Invoker.method(target, best.method(), best.input(), best.output(), best.context());
    }

    private static Candidate signature(Method m) {
        Class<?>[] p = m.getParameterTypes();
        int n = p.length;
        boolean context = n > 0 && p[n - 1] == Context.class;
        if (context) {
            n--;
        }
        if (n == 0) {
            return new Candidate(m, Invoker.Input.NONE, false, context);
        }
        if (n == 2 && p[0] == java.io.InputStream.class && Invoker.isOutput(p[1])) {
            return new Candidate(m, Invoker.Input.STREAM, true, context);
        }
        if (n == 1 && Invoker.inputOf(p[0]) != null) {
            return new Candidate(m, Invoker.inputOf(p[0]), false, context);
        }
        return null;
    }
}
