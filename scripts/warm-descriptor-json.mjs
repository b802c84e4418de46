// Makes build/tenantd.json (the descriptor set as protobufjs JSON) from the
// compiled code, so that the first command after a build, or every one in a
// read-only image, does not decode the set itself (src/protoRoot.ts).
const { descriptorJson, DESCRIPTOR_JSON_PATH } = await import('../dist/src/protoRoot.js');
descriptorJson();
console.log(`warm-descriptor-json: ${DESCRIPTOR_JSON_PATH}`);
