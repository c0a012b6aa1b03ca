// `npm run prepare`: builds dist/ from src/. npm runs it after `npm ci` here, and also when
// another project installs this package from a directory or a git checkout
// (`npm install ./clients/js`), where the dev dependencies are not installed: then they are
// installed first, from the lockfile.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

process.chdir(fileURLToPath(new URL("..", import.meta.url)));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
if (!existsSync("node_modules/tsup/package.json")) {
  console.error("sigmahub-client: installing its build tools (npm ci) to build dist/");
  execFileSync(npm, ["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], {
    stdio: ["ignore", "inherit", "inherit"],
  });
}
execFileSync(process.execPath, ["node_modules/tsup/dist/cli-default.js"], {
  stdio: ["ignore", "inherit", "inherit"],
});
