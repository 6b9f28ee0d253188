package lmi.lambda.runtime;

import java.io.File;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The class loader of the function's code: {@code LAMBDA_TASK_ROOT} itself (class files in package
 * directories) followed by every {@code LAMBDA_TASK_ROOT/lib/*.jar} in name order. Its parent is the
 * shim's loader, so {@code lmi.lambda.*} always resolves to the shim's own interfaces.
 */
final class TaskClassLoader {
    private TaskClassLoader() {}

    static URLClassLoader create(File taskRoot) throws MalformedURLException {
        List<URL> urls = new ArrayList<>();
        urls.add(taskRoot.toURI().toURL());
        File[] jars = new File(taskRoot, "lib").listFiles((dir, name) -> name.endsWith(".jar"));
        if (jars != null) {
            Arrays.sort(jars);
            for (File jar : jars) {
                urls.add(jar.toURI().toURL());
            }
        }
        // Unnamed: a named loader would prefix every stack frame of the function with its name.
        return new URLClassLoader(urls.toArray(new URL[0]), TaskClassLoader.class.getClassLoader());
    }
}
