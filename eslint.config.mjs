// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
	{ ignores: ["node_modules/", "dist/", "data/", "public/vendor/", "coverage/"] },
	js.configs.recommended,
	...tseslint.configs.recommended,
	{
		files: ["public/**/*.js"],
		languageOptions: {
			sourceType: "module",
			globals: { window: "readonly", document: "readonly", fetch: "readonly", FormData: "readonly", location: "readonly", alert: "readonly", prompt: "readonly", confirm: "readonly", crypto: "readonly", CSS: "readonly", setTimeout: "readonly", clearTimeout: "readonly", io: "readonly", console: "readonly", FileReader: "readonly" },
		},
	},
	{
		languageOptions: {
			globals: { process: "readonly", console: "readonly", Buffer: "readonly", setTimeout: "readonly", clearTimeout: "readonly", setInterval: "readonly", clearInterval: "readonly", URL: "readonly", fetch: "readonly", AbortController: "readonly", AbortSignal: "readonly", require: "readonly", module: "writable", __dirname: "readonly" },
		},
		rules: {
			"@typescript-eslint/no-explicit-any": "off",
			"@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
			"@typescript-eslint/no-require-imports": "off",
		},
	},
);
