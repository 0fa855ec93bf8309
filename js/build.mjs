// Bundles one ESM file per view into ../circuitviz/static (shipped in the wheel; no build at install).
import * as esbuild from "esbuild";

const watch = process.argv.includes("--watch");
const options = {
  entryPoints: ["src/attention.ts", "src/patching.ts", "src/circuit.ts", "src/logitlens.ts", "src/steering.ts", "src/feature.ts"],
  outdir: "../circuitviz/static",
  bundle: true,
  format: "esm",
  minify: !watch,
  target: ["es2020"],
  logLevel: "info",
};
if (watch) {
  await (await esbuild.context(options)).watch();
} else {
  await esbuild.build(options);
}
