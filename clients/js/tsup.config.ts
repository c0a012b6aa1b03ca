import { defineConfig } from "tsup";

// ESM and CommonJS, with type declarations for both; an extra minified browser ESM build
// whose size the closing note of issue 16 reports.
export default defineConfig([
  {
    entry: ["src/index.ts"],
    format: ["esm", "cjs"],
    dts: true,
    sourcemap: true,
    clean: true,
    target: "es2020",
  },
  {
    entry: { "sigmahub-client.min": "src/index.ts" },
    format: ["esm"],
    minify: true,
    target: "es2020",
    platform: "browser",
  },
]);
