#!/usr/bin/env node
// CLI shim: runs the compiled CLI (npm run build first; npm install does it through "prepare").
//
// Dawn prints two warnings to stderr from native code whenever it enumerates a Vulkan adapter
// ("maxDynamicUniformBuffersPerPipelineLayout artificially reduced from ... to fit dynamic offset
// allocation limit." and its Storage twin): on lavapipe, RADV and NVIDIA alike, whatever limits the
// device asks for, and nothing in the process can catch them. So the shim runs the CLI in a child
// process whose stderr comes through a pipe, drops exactly those two lines and passes everything
// else on unchanged and at once (a progress bar redrawn with \r included). The child is told when
// the real stderr is a terminal (GPT2_WEBGPU_STDERR_TTY), so it still draws its progress bar.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CHILD = 'GPT2_WEBGPU_CLI_CHILD';

if (process.env[CHILD] === '1') {
  // A reader that stops early (`gpt2-webgpu generate ... | head -c 20`) closes the pipe: end
  // quietly, as if the output had been read to the end, instead of with an EPIPE stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
  }
  const { main } = await import('../dist/src/cli.js');
  process.exitCode = await main(process.argv.slice(2));
} else {
  const DAWN_WARNING =
    /^Warning: maxDynamic(Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.\r?$/;
  const PREFIX = 'Warning: maxDynamic';
  const child = spawn(
    process.execPath,
    [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)],
    {
      stdio: ['inherit', 'inherit', 'pipe'],
      env: { ...process.env, [CHILD]: '1', ...(process.stderr.isTTY ? { GPT2_WEBGPU_STDERR_TTY: '1' } : {}) },
    },
  );
  let stderrOpen = true;
  process.stderr.on('error', () => {
    stderrOpen = false; // nobody reads it any more: keep draining the child's, write nothing
  });
  const write = (s) => {
    if (stderrOpen && s) process.stderr.write(s);
  };
  // Whole lines are checked; a partial line is held back only while it could still become one of
  // the two warnings, so everything else (progress redrawn with \r) is passed on at once.
  let pending = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (!DAWN_WARNING.test(line)) write(line + '\n');
    }
    if (!(PREFIX.startsWith(pending) || pending.startsWith(PREFIX))) {
      write(pending);
      pending = '';
    }
  });
  child.stderr.on('end', () => write(pending));
  // Ctrl-C reaches the child through the terminal's process group; a signal sent to this process
  // alone is passed on. Either way this process waits for the child and exits as it did.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('error', (e) => {
    console.error(`gpt2-webgpu: cannot start the CLI process: ${e.message}`);
    process.exit(1);
  });
  child.on('close', (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
    } else process.exit(code ?? 1);
  });
}
