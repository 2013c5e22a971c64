// Where a tensor's memory lives.
#ifndef FTX_KERNELS_BASE_DEVICE_H_
#define FTX_KERNELS_BASE_DEVICE_H_

#include <cstdint>

namespace ftx {

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static constexpr Device Cpu() { return Device{DeviceType::kCpu, 0}; }
  static constexpr Device Cuda(int index = 0) {
    return Device{DeviceType::kCuda, index};
  }
  bool operator==(const Device& other) const {
    return type == other.type && index == other.index;
  }
  bool operator!=(const Device& other) const { return !(*this == other); }
};

constexpr const char* DeviceTypeName(DeviceType type) {
  switch (type) {
    case DeviceType::kCpu:
      return "cpu";
    case DeviceType::kCuda:
      return "cuda";
  }
  return "?";
}

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_DEVICE_H_
