// Renders /docs/asyncapi.json: each namespace, its client → server events with payload and ack,
// and its server → client events. Plain DOM, no framework, nothing from a CDN.
const root = document.getElementById("asyncapi");

function el(tag, attrs = {}, ...children) {
	const node = document.createElement(tag);
	for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
	for (const child of children) if (child != null) node.append(child);
	return node;
}

/** A `#/a/b/c` reference inside the document. */
function resolve(doc, ref) {
	return ref
		.replace(/^#\//, "")
		.split("/")
		.reduce((node, key) => (node == null ? node : node[key.replace(/~1/g, "/").replace(/~0/g, "~")]), doc);
}

function typeOf(schema) {
	if (schema.$ref) return schema.$ref.split("/").pop();
	if (schema.const !== undefined) return JSON.stringify(schema.const);
	if (schema.enum) return schema.enum.map(v => JSON.stringify(v)).join(" | ");
	const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
	if (type === "array" && schema.items) return `${typeOf(schema.items)}[]`;
	if (schema.oneOf) return schema.oneOf.map(typeOf).join(" | ");
	return type ?? "any";
}

function limits(schema) {
	const out = [];
	for (const key of ["minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "pattern", "format", "default"]) {
		if (schema[key] !== undefined) out.push(`${key}: ${JSON.stringify(schema[key])}`);
	}
	return out.join(", ");
}

/** A schema as a nested list; references open on demand, so cycles cost nothing. */
function renderSchema(doc, schema, depth = 0) {
	if (!schema || depth > 8) return el("span", { class: "muted" }, "…");
	if (schema.$ref) {
		const details = el("details", {}, el("summary", {}, el("code", {}, schema.$ref.split("/").pop())));
		details.addEventListener("toggle", () => {
			if (details.open && details.children.length === 1) details.append(renderSchema(doc, resolve(doc, schema.$ref), depth + 1));
		}, { once: false });
		return details;
	}
	if (schema.oneOf) return el("ul", { class: "schema" }, ...schema.oneOf.map(s => el("li", {}, el("span", { class: "muted" }, "one of: "), renderSchema(doc, s, depth + 1))));
	if (schema.properties) {
		const required = new Set(schema.required ?? []);
		return el(
			"ul",
			{ class: "schema" },
			...Object.entries(schema.properties).map(([name, prop]) =>
				el(
					"li",
					{},
					el("code", {}, name + (required.has(name) ? "" : "?")),
					" ",
					el("span", { class: "type" }, typeOf(prop)),
					limits(prop) ? el("span", { class: "muted" }, ` (${limits(prop)})`) : null,
					prop.description ? el("div", { class: "desc" }, prop.description) : null,
					prop.properties || prop.$ref || prop.oneOf ? renderSchema(doc, prop, depth + 1) : prop.items && (prop.items.properties || prop.items.$ref) ? renderSchema(doc, prop.items, depth + 1) : null,
				),
			),
		);
	}
	if (schema.type === "array" && schema.items) return el("div", {}, el("span", { class: "type" }, "array of "), renderSchema(doc, schema.items, depth + 1));
	return el("span", { class: "type" }, typeOf(schema));
}

function renderMessage(doc, message, reply) {
	const section = el("section", { class: "message", id: message.name });
	section.append(el("h4", {}, el("code", {}, message.name)), message.summary ? el("p", {}, message.summary) : null, message.description ? el("p", { class: "desc" }, message.description) : null);
	section.append(el("h5", {}, "Payload"), renderSchema(doc, message.payload));
	if (reply) section.append(el("h5", {}, "Ack"), renderSchema(doc, reply.payload));
	return section;
}

async function main() {
	const doc = await (await fetch("/docs/asyncapi.json")).json();
	root.replaceChildren(el("h1", {}, doc.info.title), el("p", {}, doc.info.description), el("p", {}, el("a", { href: "/docs" }, "REST API (Swagger UI)"), " · ", el("a", { href: "/docs/asyncapi.json" }, "asyncapi.json")));
	for (const [channelKey, channel] of Object.entries(doc.channels)) {
		const received = [];
		const sent = [];
		for (const operation of Object.values(doc.operations)) {
			if (operation.channel.$ref !== `#/channels/${channelKey}`) continue;
			const message = resolve(doc, operation.messages[0].$ref);
			const reply = operation.reply ? resolve(doc, operation.reply.messages[0].$ref) : null;
			(operation.action === "receive" ? received : sent).push(renderMessage(doc, message, reply));
		}
		root.append(
			el("h2", {}, `Namespace ${channel.address}`),
			el("p", {}, channel.description ?? ""),
			el("h3", {}, "Client → server (with an ack)"),
			...received,
			el("h3", {}, "Server → client"),
			...sent,
		);
	}
}

main().catch(err => root.replaceChildren(el("p", {}, `Could not load /docs/asyncapi.json: ${err.message}`)));
