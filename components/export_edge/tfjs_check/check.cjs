// Runs a TensorFlow.js graph model (model.json + weight shards) on decoded images with the
// pure-JavaScript TensorFlow.js runtime (CPU backend), as a browser or Node.js app would,
// and writes the named outputs (each image's shape and values) and the milliseconds the model
// took per image. export_edge compares them with the SavedModel's (components/export_edge/tfjs.py).
//
//   NODE_PATH=<folder with node_modules/@tensorflow/...> node check.cjs MODEL_JSON PIXELS OUT_JSON OUTPUT[,OUTPUT...]
//
// PIXELS: uint32 little-endian image count, then per image uint32 height, uint32 width and
// height * width * 3 bytes of RGB pixels (uint8, row-major).
"use strict";
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const { loadGraphModel } = require("@tensorflow/tfjs-converter");

function artifacts(modelJson) {
  // tf.io.ModelArtifacts read from disk: what the browser's loader fetches over HTTP.
  const model = JSON.parse(fs.readFileSync(modelJson, "utf8"));
  const weightSpecs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const shard of group.paths) shards.push(fs.readFileSync(path.join(path.dirname(modelJson), shard)));
  }
  const weights = Buffer.concat(shards);
  return {
    modelTopology: model.modelTopology,
    format: model.format,
    generatedBy: model.generatedBy,
    convertedBy: model.convertedBy,
    signature: model.signature,
    userDefinedMetadata: model.userDefinedMetadata,
    weightSpecs,
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
  };
}

function readUint32(fd, position) {
  const buffer = Buffer.alloc(4);
  fs.readSync(fd, buffer, 0, 4, position);
  return buffer.readUInt32LE(0);
}

async function main() {
  const [modelJson, pixelsFile, outFile, names] = process.argv.slice(2);
  await tf.setBackend("cpu");
  const loaded = artifacts(modelJson);
  const model = await loadGraphModel({ load: async () => loaded });
  const tensorName = (spec) => spec.name.replace(/:0$/, "");
  const input = tensorName(loaded.signature.inputs.pixels);
  const keys = names.split(",");
  const outputs = keys.map((k) => tensorName(loaded.signature.outputs[k]));
  const result = { runtime: `@tensorflow/tfjs-core ${tf.version_core}`, backend: tf.getBackend(), outputs: {}, milliseconds: [] };
  for (const key of keys) result.outputs[key] = [];
  const fd = fs.openSync(pixelsFile, "r");
  const count = readUint32(fd, 0);
  let position = 4;
  for (let i = 0; i < count; i++) {
    const height = readUint32(fd, position);
    const width = readUint32(fd, position + 4);
    position += 8;
    const pixels = Buffer.alloc(height * width * 3);
    fs.readSync(fd, pixels, 0, pixels.length, position);
    position += pixels.length;
    // TensorFlow.js has no uint8 tensors: its graph models take uint8 inputs as int32.
    const image = tf.tensor4d(Int32Array.from(pixels), [1, height, width, 3], "int32");
    // executeAsync: non-maximum suppression is one of TensorFlow.js' asynchronous ops.
    const start = performance.now();
    const fetched = await model.executeAsync({ [input]: image }, outputs);
    const tensors = Array.isArray(fetched) ? fetched : [fetched]; // one output: not an array
    const values = await Promise.all(tensors.map((t) => t.data()));
    result.milliseconds.push(performance.now() - start);
    for (const [i, key] of keys.entries()) {
      result.outputs[key].push({ shape: tensors[i].shape, values: Array.from(values[i]) });
    }
    tf.dispose([image, ...tensors]);
  }
  fs.closeSync(fd);
  fs.writeFileSync(outFile, JSON.stringify(result));
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
